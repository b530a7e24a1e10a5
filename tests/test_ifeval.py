"""flan_jax.evaluators.ifeval: NLTK's punkt_tab written offline for the harness's IFEval checkers,
scores checked by hand, bad prompt files, and the evaluator against the harness's own IFEval task on
the same model and prompts."""

import json
import os
import pathlib
import subprocess
import sys

import lm_eval
import ml_collections
import pytest

from flan_jax import inference, lm_harness
from flan_jax.evaluators import common, ifeval
from tests.helpers import ROOT

ROWS = [
    {
        "key": 1,
        "prompt": "Describe a cat without commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}]
    },
    {
        "key": 2,
        "prompt": "Describe a dog in at least 5 words and end with 'Any questions?'",
        "instruction_id_list": ["length_constraints:number_words", "startend:end_checker"],
        "kwargs": [{
            "relation": "at least",
            "num_words": 5
        }, {
            "end_phrase": "Any questions?"
        }]
    },
    {
        "key": 3,
        "prompt": "Write fewer than 3 sentences about the sun.",
        "instruction_id_list": ["length_constraints:number_sentences"],
        "kwargs": [{
            "relation": "less than",
            "num_sentences": 3
        }]
    },
]


def write_rows(path, rows=ROWS):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_the_checkers_run_offline_with_punkt_tab_written_from_the_package(tmp_path):
  """A fresh cache, no NLTK data anywhere, NLTK's downloader and every socket refusing: the checkers
  import, and sentence counting (Punkt) gives the right answer."""
  script = """
import socket, nltk
def refuse(*args, **kwargs):
  raise RuntimeError("network used")
socket.socket.connect = refuse
nltk.download = refuse
from flan_jax.evaluators import ifeval
utils, _ = ifeval.checkers()
doc = {"key": 3, "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences"],
       "kwargs": [{"relation": "less than", "num_sentences": 3}]}
follows = lambda text: utils.process_results(doc, [text])["prompt_level_strict_acc"]
print(follows("Dr. Smith left at 5 p.m. on Jan. 3. He came back."), follows("One. Two. Three."))
"""
  env = {
      **os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
      "NLTK_DATA": str(tmp_path / "none")
  }
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", "False"]
  assert (tmp_path / "cache" / "flan_jax" / "nltk_data" / "tokenizers" / "punkt_tab" / "english" /
          "abbrev_types.txt").exists()


def test_scores_are_the_checkers_verdicts_aggregated(tmp_path):
  rows = ifeval.read_prompts(write_rows(tmp_path / "p.jsonl"))
  answers = [
      "A cat is small, soft and quiet.",  # a comma: not followed (strict and loose)
      "**Dogs are loyal and kind friends.**\nAny questions?",  # both followed
      "The sun is hot. It is bright. It is far away.",  # three sentences: not fewer than 3
  ]
  result = ifeval.score(rows, answers)
  assert result["prompt_level_strict_acc"] == pytest.approx(1 / 3)
  assert result["inst_level_strict_acc"] == pytest.approx(2 / 4)
  assert result["instructions"]["punctuation:no_comma"] == {
      "count": 1,
      "strict_acc": 0.0,
      "loose_acc": 0.0
  }
  assert result["instructions"]["startend:end_checker"]["strict_acc"] == 1.0
  # Loose scoring also tries the answer without its first line: "Any questions?" alone has too few
  # words but still ends with the phrase, so loose stays at least strict.
  assert result["prompt_level_loose_acc"] >= result["prompt_level_strict_acc"]
  assert [f["prompt_level_strict_acc"] for f in result["follows"]] == [False, True, False]
  ifeval.write_results(result, tmp_path / "out", step=0, model="m")
  assert "| punctuation:no_comma | 1 | 0.000 | 0.000 |" in (tmp_path / "out" /
                                                            "results.md").read_text()


def test_bad_prompt_files_name_the_line(tmp_path):
  bad = [{**ROWS[0], "instruction_id_list": ["punctuation:no_semicolons"]}]
  with pytest.raises(ValueError,
                     match=r"p.jsonl:1: unknown instruction ids \['punctuation:no_semicolons'\]"):
    ifeval.read_prompts(write_rows(tmp_path / "p.jsonl", bad))
  bad = [ROWS[0], {**ROWS[1], "kwargs": [{}]}]
  with pytest.raises(ValueError,
                     match=r"p.jsonl:2: \"kwargs\" must be a list of one object per instruction"):
    ifeval.read_prompts(write_rows(tmp_path / "p.jsonl", bad))
  with pytest.raises(ValueError, match="evals.ifeval_bad: .*unexpected keyword argument 'judge'"):
    common.REGISTRY["ifeval"](None, name="ifeval_bad", prompts=str(tmp_path / "p.jsonl"), judge="x")


@pytest.mark.slow
def test_the_evaluator_and_the_harness_ifeval_task_agree(tmp_path, chat_checkpoint):
  """The evaluator's answers and metrics on an imported chat model equal the harness's IFEval task
  (included from the harness, reading the same file) through the flan_jax model with the chat
  template."""
  prompts = write_rows(tmp_path / "prompts.jsonl")
  loaded = inference.load(checkpoint_dir=chat_checkpoint[0])
  config = ml_collections.ConfigDict({"data": {"template": {"format": loaded.fmt}}})
  context = common.Context(config, loaded.model, loaded.tokenizer, loaded.mesh,
                           str(tmp_path / "run"))
  [scheduled] = common.from_config(
      {
          "ifeval": dict(type="ifeval", every_steps=0, at_start=True, prompts=prompts,
                         max_new_tokens=24)
      }, context)
  metrics = scheduled.evaluator.run(loaded.params, 0)
  out = tmp_path / "run" / "eval" / "0" / "ifeval"
  answers = [
      json.loads(line)["answer"] for line in (out / "answers.jsonl").read_text().splitlines()
  ]
  assert any(answers) and json.loads(
      (out / "results.json").read_text())["prompt_level_strict_acc"] == (
          metrics["prompt_level_strict_acc"])

  harness_yaml = pathlib.Path(lm_eval.__file__).parent / "tasks" / "ifeval" / "ifeval.yaml"
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "ifeval_local.yaml").write_text(
      f"include: {harness_yaml}\ntask: ifeval_local\ndataset_path: json\ndataset_kwargs:\n"
      f"  data_files:\n    train: {prompts}\n"
      "generation_kwargs:\n  until: []\n  do_sample: false\n  temperature: 0.0\n"
      "  max_gen_toks: 24\n"
  )
  results = lm_harness.evaluate(
      loaded, tasks=["ifeval_local"], include_path=str(tmp_path / "tasks"),
      output_path=str(tmp_path / "harness"), apply_chat_template=True,
      max_length=256)  # the evaluator cuts no prompt; the tiny model says 64
  harness = results["results"]["ifeval_local"]
  assert {m: harness[f"{m},none"] for m in ifeval.METRICS} == pytest.approx(metrics)
  samples_file = next((tmp_path / "harness").rglob("samples_ifeval_local_*.jsonl"))
  samples = sorted((json.loads(line)
                    for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
  assert [s["resps"][0][0] for s in samples] == answers
