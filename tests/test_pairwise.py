"""Judged comparison: pairing answers files, a scripted model judge (both orders, ties, the cache),
the win-rate arithmetic, bootstrap interval and length-controlled rate, mirror symmetry, the report,
and the pairwise evaluator in a training run."""

import json

import numpy as np
import pytest

from flan_jax import inference
from flan_jax.evaluators import pairwise
from tests.helpers import write_answers


def pairs_of(answers_a, answers_b, categories=None):
  rows = lambda answers: [({
      "prompt": f"Question {i}?",
      "answer": a,
      **({
          "category": categories[i]
      } if categories else {})
  }, f"f:{i + 1}") for i, a in enumerate(answers)]
  return pairwise.make_pairs(rows(answers_a), rows(answers_b))


def test_answers_are_paired_by_prompt_and_mismatches_named(tmp_path):
  a = write_answers(tmp_path / "a.jsonl", [{
      "prompt": "p1",
      "answer": "x",
      "category": "c"
  }, {
      "prompt": "p2",
      "answer": "y"
  }, {
      "prompt": "p1",
      "answer": "z"
  }])
  b = write_answers(tmp_path / "b.jsonl", [{
      "prompt": "p2",
      "answer": "Y"
  }, {
      "prompt": "p1",
      "answer": "X"
  }, {
      "prompt": "p1",
      "answer": "Z"
  }])
  pairs = pairwise.make_pairs(pairwise.read_answers(a), pairwise.read_answers(b))
  assert [(p.prompt, p.a, p.b, p.category) for p in pairs] == [("p1", "x", "X", "c"),
                                                               ("p2", "y", "Y", "all"),
                                                               ("p1", "z", "Z", "all")]
  assert len({p.id for p in pairs}) == 3
  other = write_answers(tmp_path / "c.jsonl", [{
      "prompt": "p1",
      "answer": "x"
  }, {
      "prompt": "p3",
      "answer": "y"
  }, {
      "prompt": "p1",
      "answer": "z"
  }])
  with pytest.raises(
      ValueError,
      match=r"1 only in A \(first at .*a.jsonl:2: 'p2'\); 1 only in B \(first at .*c.jsonl:2"):
    pairwise.make_pairs(pairwise.read_answers(a), pairwise.read_answers(other))
  (tmp_path / "bad.jsonl").write_text('{"prompt": "p1", "answer": "x"}\n{"prompt": "p2"}\n')
  with pytest.raises(
      ValueError, match=r"bad.jsonl:2: expected an object with string \"prompt\" and \"answer\""):
    pairwise.read_answers(str(tmp_path / "bad.jsonl"))
  directory = tmp_path / "answers"
  directory.mkdir()
  write_answers(directory / "t1.jsonl", [{"prompt": "p1", "answer": "x"}])
  write_answers(directory / "t2.jsonl", [{"prompt": "p2", "answer": "y"}])
  assert [r["prompt"] for r, _ in pairwise.read_answers(str(directory))] == ["p1", "p2"]


class TextTokenizer:
  path = "scripted"
  chat_template = None

  def generation_prompt(self, conversation, fmt):
    return conversation[-1][1]


def scripted_judge(monkeypatch, prefer, calls):
  """A judge whose log-probabilities for ("1", "2") come from prefer(first, second), the first
  answer's margin."""

  def choose(loaded, prompts, labels, **kw):
    assert labels == pairwise.LABELS
    calls.extend(prompts)
    out = []
    for prompt in prompts:
      first = prompt.split("[Response 1]\n")[1].split("\n\n[Response 2]")[0]
      second = prompt.split("[Response 2]\n")[1].split("\n\nWhich response")[0]
      margin = prefer(first, second)
      out.append([margin / 2, -margin / 2])
    return np.asarray(out)

  monkeypatch.setattr(inference, "choose", choose)
  return inference.LoadedModel(None, None, TextTokenizer(), "flan", 3, "scripted-judge", None)


def test_both_orders_are_judged_and_disagreement_or_identical_answers_are_ties(
    tmp_path, monkeypatch):
  calls = []
  # Prefers the longer answer, plus a pull toward whatever is shown first.
  loaded = scripted_judge(monkeypatch, lambda first, second: len(first) - len(second) + 2.5, calls)
  pairs = pairs_of(["a long answer", "short", "same", "abcd"],
                   ["short", "a long answer", "same", "abc"])
  verdicts = pairwise.model_verdicts(loaded, pairs, tmp_path / "judgments.jsonl")
  assert [verdicts[p.id]["verdict"]
          for p in pairs] == ["a", "b", "tie", "tie"]  # 1 char: position decides
  assert len(calls) == 6 and not any("[Response 1]\nsame" in c for c in calls)  # identical: no call
  assert verdicts[pairs[2].id]["identical"] and not verdicts[pairs[0].id]["identical"]
  assert verdicts[pairs[0].id]["p_a_when_first"] > verdicts[pairs[0].id]["p_a_when_second"] > 0.5
  calls.clear()
  again = pairwise.model_verdicts(loaded, pairs, tmp_path / "judgments.jsonl")
  assert not calls and {
      k: v["verdict"] for k, v in again.items()
  } == {
      k: v["verdict"] for k, v in verdicts.items()
  }
  other = inference.LoadedModel(None, None, TextTokenizer(), "flan", 4, "scripted-judge",
                                None)  # another step: judged anew
  pairwise.model_verdicts(other, pairs, tmp_path / "judgments.jsonl")
  assert len(calls) == 6


def test_a_judge_without_its_chat_template_is_refused(monkeypatch):
  loaded = inference.LoadedModel(None, None, TextTokenizer(), "chat_template", 0, "ckpt", None)
  with pytest.raises(ValueError, match="judge ckpt: .* chat template, but scripted has none"):
    pairwise.model_verdicts(loaded, pairs_of(["x"], ["y"]), None)


def test_win_rate_interval_and_length_control():
  pairs = pairs_of(["x"] * 4, ["y"] * 4)
  result = pairwise.win_rates(["a", "a", "b", "tie"], pairs, resamples=2000, seed=0)
  assert (result["wins"], result["losses"], result["ties"], result["pairs"]) == (2, 1, 1, 4)
  assert result["win_rate"] == 62.5
  assert result["ci_low"] < 62.5 < result["ci_high"] and result["ci_low"] >= 0 and result[
      "ci_high"] <= 100
  assert pairwise.bootstrap_interval(np.ones(10), resamples=100, seed=0) == (100.0, 100.0)
  narrow = pairwise.bootstrap_interval(np.asarray([1.0, 0.0] * 200), resamples=2000, seed=0)
  wide = pairwise.bootstrap_interval(np.asarray([1.0, 0.0] * 5), resamples=2000, seed=0)
  assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3 and narrow[0] < 50 < narrow[1]
  # Outcomes unrelated to length: the length-controlled rate is the win rate.
  outcomes = np.asarray([1, 1, 1, 0] * 10, np.float64)
  balanced = pairwise.length_controlled(outcomes, [100] * 40, [100] * 40)
  assert balanced == pytest.approx(75.0, abs=0.5)
  # A's answer is longer in 30 of 40 pairs and wins 9 in 10 of those, and 1 in 10 when shorter:
  # 70% raw, even at equal length.
  outcomes = np.asarray([1.0] * 27 + [0.0] * 3 + [1.0] + [0.0] * 9)
  length_a = np.asarray([300] * 30 + [100] * 10)
  assert 100 * outcomes.mean() == 70.0
  assert pairwise.length_controlled(outcomes, length_a, [200] * 40) == pytest.approx(50.0, abs=1.0)
  assert pairwise.length_controlled(np.ones(8), [10] * 8,
                                    [10] * 8) > 99  # one-sided: finite, near 100


def test_judging_a_against_b_mirrors_b_against_a(tmp_path, monkeypatch):
  loaded = scripted_judge(monkeypatch, lambda first, second: (len(first) - len(second)) * 0.7 + 1.0,
                          [])
  rng = np.random.default_rng(0)
  answers_a = ["x" * int(n) for n in rng.integers(1, 30, 40)]
  answers_b = ["y" * int(n) for n in rng.integers(1, 30, 40)]
  categories = [["math", "email", "code"][i % 3] for i in range(40)]
  reports = []
  for first, second, name in ((answers_a, answers_b, "ab"), (answers_b, answers_a, "ba")):
    pairs = pairs_of(first, second, categories)
    verdicts = pairwise.model_verdicts(loaded, pairs, tmp_path / f"{name}.jsonl")
    reports.append(pairwise.report(pairs, verdicts, {}, resamples=1000, seed=0, names={}))
  ab, ba = reports
  assert 0 < ab["ties"] < 40 and 0 < ab["wins"] and 0 < ab["losses"]
  for x, y in [(ab, ba), *((ab["model"]["categories"][c], ba["model"]["categories"][c])
                           for c in ("math", "email"))]:
    assert (x["wins"], x["ties"], x["losses"]) == (y["losses"], y["ties"], y["wins"])
    assert x["win_rate"] == pytest.approx(100 - y["win_rate"])
    assert x["ci_low"] == pytest.approx(100 -
                                        y["ci_high"]) and x["ci_high"] == pytest.approx(100 -
                                                                                        y["ci_low"])
    assert x["length_controlled_win_rate"] == pytest.approx(100 - y["length_controlled_win_rate"],
                                                            abs=1e-6)


def test_report_merges_people_and_model_and_writes_files(tmp_path, monkeypatch):
  loaded = scripted_judge(monkeypatch, lambda first, second: len(first) - len(second), [])
  pairs = pairs_of(["long answer", "s", "same"], ["s", "long answer", "same"], ["c1", "c2", "c1"])
  model = pairwise.model_verdicts(loaded, pairs, tmp_path / "j.jsonl")
  votes = {pairs[0].id: "a", pairs[1].id: "a"}
  result = pairwise.report(pairs, model, votes, resamples=200, seed=0, names={
      "a": "A",
      "b": "B",
      "judge": "J"
  })
  assert result["source"] == "model" and result["pairs"] == 3 and result["win_rate"] == 50.0
  assert result["people"]["pairs"] == 2 and result["people"]["win_rate"] == 100.0
  assert result["agreement"] == {"pairs": 2, "rate": 0.5}
  pairwise.write_report(result, tmp_path)
  assert json.loads((tmp_path / "judge.json").read_text())["win_rate"] == 50.0
  assert "| c1 | 2 |" in (tmp_path / "judge.md").read_text() and (tmp_path /
                                                                  "judge.png").stat().st_size > 1000
  people_only = pairwise.report(pairs, None, votes, resamples=200, seed=0, names={})
  assert people_only["source"] == "people" and people_only[
      "win_rate"] == 100.0 and "agreement" not in people_only
  with pytest.raises(ValueError, match="nothing to report"):
    pairwise.report(pairs, None, {}, resamples=200, seed=0, names={})


def test_decided_pairs_become_preference_rows_people_first_ties_left_out():
  pairs = pairs_of(["good", "same", "meh", "bad", "x"], ["bad", "same", "fine", "good", "y"], ["c"] * 5)
  model = {p.id: {"verdict": v} for p, v in zip(pairs, ["a", "tie", "b", "a", "tie"])}
  votes = {pairs[3].id: "b", pairs[4].id: "tie"}  # people overrule the judge on pair 3
  rows = pairwise.preference_rows(pairs, model, votes)
  assert rows == [
      {"prompt": "Question 0?", "chosen": "good", "rejected": "bad", "category": "c", "source": "model"},
      {"prompt": "Question 2?", "chosen": "fine", "rejected": "meh", "category": "c", "source": "model"},
      {"prompt": "Question 3?", "chosen": "good", "rejected": "bad", "category": "c", "source": "people"},
  ]
  assert pairwise.preference_rows(pairs, None, votes) == rows[2:]


def test_a_pairwise_entry_names_its_missing_keys_and_a_bad_prompts_file_by_line(tmp_path):
  from configs import common as config_common
  from flan_jax.evaluators import common
  context = common.Context(config=None, model=None, tokenizer=None, mesh=None,
                           workdir=str(tmp_path))
  with pytest.raises(ValueError, match=r"evals.judged: .*prompts= .* required"):
    common.from_config(
        {
            "judged": {
                "type": "pairwise",
                "every_steps": 0,
                "at_start": True,
                "prompts": "",
                "judge": "ckpt"
            }
        }, context)
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "Say hi."}\n{"prompt": ""}\n')
  with pytest.raises(ValueError, match=f"{prompts}:2: expected an object with a non-empty string"):
    common.from_config({"judged": config_common.pairwise(str(prompts), "ckpt")}, context)


@pytest.mark.slow
def test_the_pairwise_evaluator_judges_a_run_against_its_start(chat_checkpoint, tmp_path):
  """The Self-Instruct loop on a tiny imported model: configs/self_instruct.py trains on generated
  rows with the human seed tasks held out (zero-shot answers at step 0 and at the end) and a
  pairwise evaluator: its answers at step 0 are the baseline; at the last step the judge compares
  the new answers with them, and the win rate is logged beside the run's other metrics."""
  from flan_jax import train
  from tests.helpers import load_config
  checkpoint_dir = chat_checkpoint[0]
  generated = [{
      "instruction": f"Is the cat on the mat number {i}?",
      "input": "",
      "output": "Yes." if i % 2 else "No.",
      "category": "classification"
  } for i in range(24)]
  seeds = [{
      "instruction": f"Where is the dog {i}?",
      "instances": [{
          "input": "",
          "output": "On the mat."
      }]
  } for i in range(5)]
  data, seed_file = write_answers(tmp_path / "generated.jsonl",
                                  generated), write_answers(tmp_path / "s.jsonl", seeds)
  prompts = write_answers(tmp_path / "prompts.jsonl", [{
      "prompt": f"Where is the cat {i}?",
      "category": "cats"
  } for i in range(4)])
  config = load_config(
      "self_instruct", f"checkpoint={checkpoint_dir},data={data},seeds={seed_file},lora=4,"
      f"judge={checkpoint_dir},prompts={prompts}")
  config.update_from_flattened_dict({
      "train.steps": 2,
      "train.checkpoint_every": 2,
      "data.seq_len": 128,
      "loss.chunk_len": 64,
      "optim.learning_rate": 1e-2,
      "evals.held_out.max_examples": 4,
      "evals.held_out.max_new_tokens": 8,
      "evals.judged.max_new_tokens": 8,
      "evals.judged.resamples": 100
  })
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  for step in (0, 2):
    rows = [
        json.loads(line) for line in (workdir / "eval" / str(step) / "answers" /
                                      "seed_tasks.jsonl").read_text().splitlines()
    ]
    assert [r["prompt"] for r in rows] == [f"Where is the dog {i}?" for i in range(4)]
  start, end = workdir / "eval" / "0" / "judged", workdir / "eval" / "2" / "judged"
  assert not (start / "judge.json").exists()  # the baseline: answers only
  for directory in (start, end):
    rows = [json.loads(line) for line in (directory / "answers.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [f"Where is the cat {i}?" for i in range(4)]
  report = json.loads((end / "judge.json").read_text())
  assert report["pairs"] == 4 and set(report["model"]["categories"]) == {"cats"}
  assert report["b"] == str(start / "answers.jsonl") and report["judge"] == checkpoint_dir
  assert len((end / "judgments.jsonl").read_text().splitlines()) == 4
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  [logged] = [r for r in records if "eval/judged/win_rate" in r]
  assert logged["step"] == 2 and logged["eval/judged/win_rate"] == report["win_rate"]
  assert logged["eval/judged/lc_win_rate"] == report["length_controlled_win_rate"]
