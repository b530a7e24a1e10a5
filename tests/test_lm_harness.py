"""flan_jax.lm_harness and the harness command: the same local tasks give the same numbers through
the `flan_jax` model as through the harness's Hugging Face backend (`hf`) on the same tiny random
models (multiple choice, generation, rolling log-likelihood, with and without the chat template),
and bad input is an error naming it.

Gemma is left out: transformers' Gemma tokenizer class wants an <unk> token the test tokenizer
lacks, so the hf backend cannot read it."""

import json
import os
import pathlib
import subprocess
import sys

import lm_eval
import numpy as np
import pytest
from lm_eval import tasks as harness_tasks

from flan_jax import convert, inference, lm_harness
from tests.helpers import ROOT, make_hf_chat_model, write_harness_tasks

TASKS = ["tiny_mc", "tiny_gen", "tiny_rolling"]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  return write_harness_tasks(tmp_path_factory.mktemp("harness_tasks"))


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def family_model(request, tmp_path_factory):
  """(Hugging Face directory, imported checkpoint) of a tiny random model of the family."""
  root = tmp_path_factory.mktemp(request.param)
  make_hf_chat_model(request.param, root / "hf")
  convert.import_checkpoint(str(root / "hf"), str(root / "ckpt"))
  return str(root / "hf"), str(root / "ckpt")


def run(model, model_args, task_dir, **kwargs):
  return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, log_samples=True,
                                 task_manager=harness_tasks.TaskManager(include_path=task_dir),
                                 **kwargs)


def assert_same_results(ours, reference):
  """Equal accuracies and generations; log-likelihoods equal to float32 rounding."""
  for metric in ("acc,none", "acc_norm,none"):
    assert ours["results"]["tiny_mc"][metric] == reference["results"]["tiny_mc"][metric]
  assert ours["results"]["tiny_gen"]["exact_match,none"] == reference["results"]["tiny_gen"][
      "exact_match,none"]
  np.testing.assert_allclose(ours["results"]["tiny_rolling"]["bits_per_byte,none"],
                             reference["results"]["tiny_rolling"]["bits_per_byte,none"], rtol=1e-5)
  responses = lambda results, task: [s["resps"] for s in results["samples"][task]]  # noqa: E731
  assert responses(ours, "tiny_gen") == responses(reference, "tiny_gen")
  assert any(r[0][0] for r in responses(ours, "tiny_gen"))  # text generated, not only stop strings
  for task in ("tiny_mc", "tiny_rolling"):
    ours_scores, reference_scores = responses(ours, task), responses(reference, task)
    flat = lambda rs: np.asarray(
        [x[0][0] if isinstance(x[0], (list, tuple)) else x[0] for r in rs for x in r])  # noqa: E731
    np.testing.assert_allclose(flat(ours_scores), flat(reference_scores), rtol=1e-5, atol=1e-4)


def test_tasks_score_as_the_hf_backend(family_model, task_dir):
  """Contexts and continuations tokenized alike (the family's BOS rule), scored over the 8 devices,
  generations cut at the same stop strings; then the same with each side's chat template."""
  hf_dir, checkpoint = family_model
  reference_args = f"pretrained={hf_dir},dtype=float32"
  ours = run("flan_jax", f"checkpoint={checkpoint},batch_size=3", task_dir)
  assert_same_results(ours, run("hf", reference_args, task_dir, device="cpu"))
  ours = run("flan_jax", f"checkpoint={checkpoint}", task_dir, apply_chat_template=True)
  context = ours["samples"]["tiny_mc"][0]["arguments"][0][0]
  assert context.endswith(("<|start_header_id|>assistant<|end_header_id|>\n\n",
                           "<|im_start|>assistant\n", "[/INST]")), context
  assert_same_results(ours,
                      run("hf", reference_args, task_dir, device="cpu", apply_chat_template=True))


@pytest.mark.slow
def test_harness_command_and_lm_eval_hf_agree(tmp_path, task_dir):
  """`python -m flan_jax.harness` and `lm_eval --model hf` on the same model and task write results
  JSON files with equal accuracies."""
  make_hf_chat_model("llama", tmp_path / "hf")
  convert.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
  common = ["--tasks", "tiny_mc", "--include_path", task_dir]
  subprocess.run([
      sys.executable, "-m", "flan_jax.harness", f"--checkpoint={tmp_path / 'ckpt'}", *common,
      "--output_path",
      str(tmp_path / "ours")
  ], cwd=ROOT, check=True, capture_output=True, timeout=600)
  subprocess.run([
      sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
      f"pretrained={tmp_path / 'hf'},dtype=float32", "--device", "cpu", *common, "--output_path",
      str(tmp_path / "hf_results")
  ], cwd=ROOT, check=True, capture_output=True, timeout=600, env={
      **os.environ, "HF_HUB_OFFLINE": "1",
      "HF_DATASETS_OFFLINE": "1"
  })
  read = lambda d: json.loads(next(pathlib.Path(d).rglob("results_*.json")).read_text())["results"][
      "tiny_mc"]  # noqa: E731
  ours, reference = read(tmp_path / "ours"), read(tmp_path / "hf_results")
  assert (ours["acc,none"], ours["acc_norm,none"]) == (reference["acc,none"],
                                                       reference["acc_norm,none"])
  assert list((tmp_path / "ours").rglob("samples_tiny_mc_*.jsonl"))


def test_bad_input_is_an_error_naming_it(tmp_path, task_dir, chat_checkpoint):
  loaded = inference.load(checkpoint_dir=chat_checkpoint[0])
  evaluate = lambda tasks, include_path, **kw: lm_harness.evaluate(  # noqa: E731
      loaded, tasks=tasks, include_path=include_path, output_path=str(tmp_path / "out"), **kw)
  with pytest.raises(ValueError, match=r"unknown task\(s\) \['no_such_task'\]"):
    evaluate(["tiny_mc", "no_such_task"], task_dir)
  broken = tmp_path / "broken_tasks"
  broken.mkdir()
  (broken / "broken.yaml").write_text("task: broken\noutput_type: [unclosed\n")
  with pytest.raises(ValueError, match=r"broken\.yaml: the task file does not parse"):
    evaluate(["broken"], str(broken))
  with pytest.raises(FileNotFoundError, match="no_such_dir: no such directory"):
    evaluate(["tiny_mc"], str(tmp_path / "no_such_dir"))
  without_template = tmp_path / "no_template"
  subprocess.run(["cp", "-r", chat_checkpoint[0], str(without_template)], check=True)
  config_path = without_template / "hf" / "tokenizer_config.json"
  config = json.loads(config_path.read_text())
  del config["chat_template"]
  config_path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="no_template: the model has no chat template to apply"):
    lm_harness.evaluate(inference.load(checkpoint_dir=str(without_template)), tasks=["tiny_mc"],
                        include_path=task_dir, output_path=str(tmp_path / "out"),
                        apply_chat_template=True)
