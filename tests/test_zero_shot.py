import json
import os

import numpy as np
import pytest

from flan_jax.evaluators import zero_shot
from flan_jax.data import pipeline, render, tasks, templates
from tests.helpers import brute_force_log_likelihood, one_device_mesh, small_model


def settings(clusters="held_out", **overrides):
  return zero_shot.Settings(**{**dict(clusters=clusters, max_examples=6, max_templates=2, batch_size=8,
                                      max_new_tokens=8), **overrides})


def test_rank_classification_picks_what_a_full_forward_pass_per_option_picks(tiny_config, tokenizer):
  """Two tasks (fixed and per-example options) and two templates scored in one packed pass."""
  config = tiny_config
  model, params = small_model(tokenizer.vocab_size)
  items = []
  for name in ("mini_nli_quantity", "mini_physical"):
    task = tasks.get(name)
    fields, templates, _ = zero_shot.task_examples(task, settings())
    items += [(task, fields, template) for template in templates[:2]]
  outcomes = zero_shot.rank_classification(params, model, tokenizer, items, config, settings(), one_device_mesh())
  assert len(outcomes) == len(items) == 4
  for (task, fields, template), (predictions, targets) in zip(items, outcomes):
    assert targets == [f["answer"] for f in fields]
    for f, predicted in zip(fields, predictions):
      prompt = render.conversation(task, f, template, config.data.template)[0]
      scores = {o: brute_force_log_likelihood(model, params, *tokenizer.encode_conversation(
                    [prompt, ("assistant", o)], config.data.template.format))
                for o in task.example_options(f)}
      assert predicted == max(scores, key=scores.get)


def test_evaluate_reports_every_held_out_task_and_cluster_and_writes_results(tiny_config, tokenizer, tmp_path):
  config = tiny_config
  config.data.held_out_clusters = ("nli", "translation")  # one classification and one generation cluster
  model, params = small_model(tokenizer.vocab_size)
  results = zero_shot.evaluate(params, model, tokenizer, config, one_device_mesh(), settings())
  held_out = {t.name for t in pipeline.resolve_mixture(config.data).evaluation}
  assert set(results["tasks"]) == held_out and set(results["clusters"]) == {"nli", "translation"}
  nli = results["tasks"]["mini_nli_quantity"]
  assert len(nli["templates"]) == 2 and nli["metric"] == "accuracy" and nli["chance"] == 100 / 3
  assert nli["mean"]["accuracy"] == np.mean([t["accuracy"] for t in nli["templates"]])
  assert nli["best"]["accuracy"] == max(t["accuracy"] for t in nli["templates"])
  assert results["tasks"]["mini_translate_en_es"]["metric"] == "bleu"
  assert results["held_out"] == np.mean([c["mean"] for c in results["clusters"].values()])
  directory = zero_shot.write_results(results, str(tmp_path), step=7)
  assert json.load(open(os.path.join(directory, "results.json")))["step"] == 7
  assert "| nli | held_out | mini_nli_quantity | accuracy |" in open(os.path.join(directory, "results.md")).read()
  assert zero_shot.summary(results)["eval/held_out"] == results["held_out"]
  # Generation tasks' answers, in the form flan_jax.judge reads; none for rank-classified tasks.
  assert sorted(os.listdir(directory / "answers")) == sorted(
      f"{name}.jsonl" for name, t in results["tasks"].items() if t["cluster"] == "translation")
  rows = [json.loads(line) for line in open(directory / "answers" / "mini_translate_en_es.jsonl")]
  assert len(rows) == 2 * results["tasks"]["mini_translate_en_es"]["examples"]  # per template
  assert {r["category"] for r in rows} == {"translation"} and {r["template"] for r in rows} == {0, 1}
  assert all(r["prompt"] and isinstance(r["answer"], str) and r["reference"] for r in rows)
  assert "answers" not in json.load(open(directory / "results.json"))["tasks"]["mini_translate_en_es"]
  assert "answers" in results["tasks"]["mini_translate_en_es"]  # the caller's results are left whole
  from flan_jax.evaluators import pairwise
  answers = pairwise.read_answers(str(directory / "answers"))
  pairs = pairwise.make_pairs(answers, answers)
  assert len(pairs) == sum(len(open(f).readlines()) for f in (directory / "answers").iterdir())


def test_local_tasks_are_scored_on_their_last_turn_options_and_references(tiny_config, tokenizer, tmp_path,
                                                                          monkeypatch):
  """User data: a multi-turn conversation is scored on its last assistant turn given everything before
  it; an options column makes rank classification; several references score the best one; a held-out
  file without validation rows is evaluated on its rows; a seen one without them is listed unscored."""
  from flan_jax import decode
  rows = {
      "chat": [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                             {"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"}]}
               for i in range(3)],
      "pick": [{"instruction": f"Is {i} even?", "output": "yes" if i % 2 == 0 else "no", "choices": ["yes", "no"]}
               for i in range(4)],
      "refs": [{"instruction": "Opposite of up?", "instances": [{"output": ["down", "below"]}]}],
      "seen": [{"instruction": f"Repeat {i}.", "output": f"{i}"} for i in range(8)],
  }
  specs = []
  for name, content in rows.items():
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in content))
    specs.append({"name": f"ev_{name}", "path": str(path), "cluster": "my skills" if name != "seen" else "repeat",
                  "format": {"chat": "messages", "refs": "instances"}.get(name, "alpaca"),
                  **({"options_field": "choices"} if name == "pick" else {})})
  config = tiny_config
  config.data.mixture = ()
  config.data.local_tasks = tuple(specs)
  config.data.held_out_clusters = ("my skills",)
  seen_prompts = []
  real_generate = decode.generate

  def generate(params, model, prompts, **kwargs):
    seen_prompts.extend(prompts)
    return real_generate(params, model, prompts, **kwargs)

  monkeypatch.setattr(decode, "generate", generate)
  model, params = small_model(tokenizer.vocab_size)
  results = zero_shot.evaluate(params, model, tokenizer, config, one_device_mesh(), settings())
  assert set(results["tasks"]) == {"ev_chat", "ev_pick", "ev_refs"} and results["clusters"]["my skills"]["group"] == "held_out"
  seen = zero_shot.evaluate(params, model, tokenizer, config, one_device_mesh(), settings("seen"))
  assert seen["unscored"] == {"ev_seen": "no evaluation examples (give a validation split)"} and not seen["tasks"]
  assert results["tasks"]["ev_pick"]["metric"] == "accuracy" and results["tasks"]["ev_pick"]["examples"] == 4
  context = [("user", "Hi"), ("assistant", "Hello"), ("user", "Say 0")]
  assert tokenizer.generation_prompt(context, config.data.template.format) in seen_prompts
  task = tasks.get("ev_refs")
  fields, _, _ = zero_shot.task_examples(task, settings())
  assert zero_shot.generation(params, model, tokenizer, [(task, fields, None)], config, settings())[0][1] == [
      ["down", "below"]]


def test_evaluation_skips_unlabeled_records_and_bad_ones_only_with_skip_bad_records():
  rows = [{"x": "a", "answer": "yes"}, {"x": "b", "answer": "maybe"}, {"x": "c", "answer": None},
          {"x": "d", "answer": "no"}, {"x": "e", "answer": "yes"}]

  def preprocess(row):
    if row["answer"] is None:
      raise tasks.UnlabeledRecordError("no label")
    return dict(row)

  task = tasks.Task(name="ev_skips", cluster="nli", source=lambda split: rows, preprocess=preprocess,
                    templates=(templates.Template("{x}? {options_}", "{answer}"),), metrics=("accuracy",),
                    options=("yes", "no"))
  three = settings(max_examples=3)
  with pytest.raises(tasks.BadRecordError, match=r"task ev_skips: answer 'maybe' is not one of the options .* "
                                                 r"\(split 'validation', record 1; data.skip_bad_records=True"):
    zero_shot.task_examples(task, three)
  rows[1]["answer"] = "no"
  fields, _, skipped = zero_shot.task_examples(task, three)  # the unlabeled one is skipped regardless
  assert [f["x"] for f in fields] == ["a", "b", "d"] and skipped == 1
  rows[1]["answer"] = "maybe"
  fields, _, skipped = zero_shot.task_examples(task, three, skip_bad_records=True)
  assert [f["x"] for f in fields] == ["a", "d", "e"] and skipped == 2


def test_a_held_out_safety_cluster_is_scored_by_refusal_and_answer_rates(tiny_config, tokenizer, monkeypatch):
  config = tiny_config
  config.data.held_out_clusters = ("safety",)
  decline = np.asarray(tokenizer.encode("I can't help with that."), np.int32)
  monkeypatch.setattr(zero_shot.decode, "generate", lambda params, model, prompts, **kw: np.stack([decline] * len(prompts)))
  model, params = small_model(tokenizer.vocab_size)
  results = zero_shot.evaluate(params, model, tokenizer, config, one_device_mesh(),
                               settings(max_examples=20, max_templates=1))
  for name in ("mini_safety_harm", "mini_safety_crime"):
    scores = results["tasks"][name]["mean"]  # a model that declines everything: no over-refusal credit
    assert (scores["refusal_rate"], scores["answer_rate"], scores["refusal_score"]) == (100.0, 0.0, 50.0)
  assert results["tasks"]["mini_safety_harm"]["metric"] == "refusal_score" and results["held_out"] == 50.0


def test_zero_shot_evaluators_of_both_groups_at_one_step_share_its_results(tiny_config, tokenizer, tmp_path):
  """Held-out and seen evaluators at the same step: results.json and results.md hold both groups,
  whichever ran first; `written` says which evaluator's results a step has."""
  from flan_jax.evaluators import common
  config = tiny_config
  config.data.held_out_clusters = ("nli",)
  model, params = small_model(tokenizer.vocab_size)
  context = common.Context(config, model, tokenizer, one_device_mesh(), str(tmp_path))
  kwargs = dict(max_examples=2, max_templates=1, batch_size=8, max_new_tokens=4)
  held_out = zero_shot.ZeroShot(context, name="held_out", clusters="held_out", **kwargs)
  seen = zero_shot.ZeroShot(context, name="seen", clusters="seen", **kwargs)
  assert set(held_out.run(params, 3)) >= {"eval/held_out", "eval/nli"}
  assert held_out.written(3) and not seen.written(3)
  assert "eval/seen" in seen.run(params, 3) and seen.written(3)
  results = json.loads((tmp_path / "eval" / "3" / "results.json").read_text())
  assert results["held_out"] is not None and results["seen"] is not None and results["step"] == 3
  assert {c["group"] for c in results["clusters"].values()} == {"held_out", "seen"}
  assert "Seen clusters" in (tmp_path / "eval" / "3" / "results.md").read_text()
  with pytest.raises(ValueError, match=r"evals.seen: .*unexpected keyword argument 'max_exampels'"):
    zero_shot.ZeroShot(context, name="seen", max_exampels=3)
  with pytest.raises(ValueError, match=r"evals.x: clusters='all': choose from held_out, seen"):
    zero_shot.ZeroShot(context, name="x", clusters="all")
