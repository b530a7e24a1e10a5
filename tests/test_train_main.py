"""End to end, the train command's job: through `train.train_and_evaluate` in-process wherever no
real process is needed, and as `python -m flan_jax.train` subprocesses for kill -9, SIGTERM, the
command-line errors and one smoke test of the commands reading a run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing import event_accumulator

from flan_jax import train
from tests.helpers import (ROOT, SMALL, copy_tokenizer, corrupt, kill_9_after, losses, small_run_config,
                           train_command)


def run(workdir, *overrides, check=True):
  result = subprocess.run(train_command(workdir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f"train failed ({result.returncode}):\n{result.stderr[-4000:]}")
  return result


def train_in_process(workdir, **overrides):
  """The small tiny run with `overrides` (dotted config keys), as the train command runs it."""
  train.train_and_evaluate(small_run_config(**overrides), str(workdir))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  train_in_process(workdir)
  return workdir


@pytest.mark.slow
def test_a_run_writes_checkpoints_metrics_and_tensorboard(uninterrupted):
  assert sorted(os.listdir(os.path.join(uninterrupted, "checkpoints"))) == ["12", "4", "8"]
  records = [json.loads(line) for line in open(os.path.join(uninterrupted, "metrics.jsonl"))]
  *records, evaluation = records
  assert [r["step"] for r in records] == list(range(1, 13))
  assert evaluation["step"] == 12 and 0 <= evaluation["eval/held_out"] == evaluation["eval/nli"] <= 100
  results = json.load(open(os.path.join(uninterrupted, "eval", "12", "results.json")))
  assert set(results["clusters"]) == {"nli"} and results["tasks"]["mini_nli_quantity"]["examples"] == 4
  assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu_vs_measured_peak", "examples_seen", "wall_time"} <= set(records[0])
  assert records[-1]["loss"] < records[0]["loss"]
  assert records[-1]["examples_seen"] > records[0]["examples_seen"] > 0
  events = event_accumulator.EventAccumulator(os.path.join(uninterrupted, "tensorboard"))
  events.Reload()
  assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
  assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in records])
  assert [e.step for e in events.Scalars("eval/nli")] == [12]
  config = json.load(open(os.path.join(uninterrupted, "config.json")))
  assert config["train"]["steps"] == 12 and config["model"]["d_model"] == 64


@pytest.mark.slow
def test_kill_9_then_rerun_continues_bitwise_identically(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  copy_tokenizer(uninterrupted, workdir)
  killed_at = kill_9_after(train_command(workdir), workdir, 6)
  assert 6 <= killed_at < 12, killed_at
  run(workdir)
  assert losses(workdir) == losses(uninterrupted)  # every step, bit for bit


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path, caplog):
  workdir = str(tmp_path)
  copy_tokenizer(uninterrupted, workdir)
  train_in_process(workdir, **{"train.steps": 8})
  first = losses(workdir)
  corrupt(workdir, 8)
  train_in_process(workdir, **{"train.steps": 8})
  assert "checkpoints/8 is unreadable" in caplog.text
  assert "resuming from step 4" in caplog.text
  assert losses(workdir) == first  # steps 5-8 trained again from step 4, identically
  assert os.listdir(os.path.join(workdir, "checkpoints_unreadable"))[0].startswith("8-")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_and_the_rerun_continues_identically(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  copy_tokenizer(uninterrupted, workdir)
  process = subprocess.Popen(train_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  while process.poll() is None and not (os.path.exists(metrics_path) and len(open(metrics_path).readlines()) >= 5):
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  saved = max(int(step) for step in os.listdir(os.path.join(workdir, "checkpoints")))
  assert saved == max(losses(workdir)) and saved not in (4, 8, 12), saved  # saved where it stopped
  run(workdir)
  assert losses(workdir) == losses(uninterrupted)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  copy_tokenizer(uninterrupted, workdir)
  train_in_process(workdir, **{"train.steps": 4})
  # Resumed with huge updates: the parameters overflow and the loss becomes NaN or infinite.
  with pytest.raises(FloatingPointError, match=r"the loss or gradient norm became NaN or infinite between steps "
                     r"(\d+) and (\d+) \(first at step (\d+)\); the last good checkpoint is kept") as error:
    train_in_process(workdir, **{"optim.learning_rate": 1e38, "optim.schedule": "constant"})
  after, by, first = map(int, re.search(r"steps (\d+) and (\d+) \(first at step (\d+)", str(error.value)).groups())
  checkpoints = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  assert checkpoints == [4] and 4 <= after < first <= by


@pytest.mark.slow
def test_unknown_config_key_is_an_error_naming_it(tmp_path):
  result = run(str(tmp_path), "--config.train.stepz=3", check=False)
  assert result.returncode != 0 and "stepz" in result.stderr
  with pytest.raises(ValueError, match=r"mesh.data=3, mesh.fsdp=1, mesh.tensor=1 needs 3 devices"):
    train_in_process(tmp_path, **{"mesh.data": 3})


@pytest.mark.slow
def test_init_from_starts_from_another_runs_parameters(uninterrupted, tmp_path):
  fresh, warm = str(tmp_path / "fresh"), str(tmp_path / "warm")
  for workdir in (fresh, warm):
    copy_tokenizer(uninterrupted, workdir)
  train_in_process(fresh, **{"train.steps": 1})
  train_in_process(warm, **{"train.steps": 1, "train.init_from": f"{uninterrupted}/checkpoints"})
  assert losses(warm)[1] < losses(uninterrupted)[12] + 0.5 < losses(fresh)[1]


@pytest.mark.slow
def test_evaluate_and_generate_commands_read_a_runs_checkpoints(uninterrupted):
  evaluation = subprocess.run([sys.executable, "-m", "flan_jax.evaluate", "--config=configs/tiny.py",
                               f"--workdir={uninterrupted}", "--step=8", *SMALL[3:]],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  assert "# Zero-shot evaluation, step 8" in evaluation.stdout and "mini_nli_taxonomy" in evaluation.stdout
  assert os.path.exists(os.path.join(uninterrupted, "eval", "8", "results.md"))
  generation = subprocess.run([sys.executable, "-m", "flan_jax.generate", f"--workdir={uninterrupted}",
                               "--prompt=Write a positive review of a kettle.", "--max_new_tokens=5"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert generation.returncode == 0, generation.stderr[-3000:]
  assert generation.stdout.startswith("[step 12] ")


@pytest.mark.slow
def test_a_run_on_local_files_with_a_held_out_free_named_cluster(tmp_path):
  """A user's own data: Alpaca and prompt/completion files in clusters of their own naming, one held
  out, the spec given as a JSON file on the command line; eval/0 (the start) and the last step score
  every local task, and the data counts are logged."""
  emails = [{"instruction": f"Write an email to {n} about the {t}.", "output": f"Dear {n}, the {t} is ready. Best."}
            for n in ("Ann", "Bob", "Cy", "Di") for t in ("invoice", "report", "meeting")]
  sums = [{"prompt": f"Add {a} and {b}.\n", "completion": f"{a + b}<|endoftext|>"} for a in range(12) for b in range(6)]
  words = [{"instruction": f"Spell {w} backwards.", "output": w[::-1]} for w in ("cat", "dog", "bird", "fish") * 8]
  (tmp_path / "emails.jsonl").write_text("\n".join(json.dumps(r) for r in emails))
  (tmp_path / "sums.jsonl").write_text("\n".join(json.dumps(r) for r in sums) + "\n{broken\n")
  (tmp_path / "words.jsonl").write_text("\n".join(json.dumps(r) for r in words))
  specs = [
      {"name": "emails", "path": str(tmp_path / "emails.jsonl"), "format": "alpaca", "cluster": "business email"},
      {"name": "sums", "path": str(tmp_path / "sums.jsonl"), "format": "prompt_completion", "cluster": "arithmetic",
       "response_suffix": "<|endoftext|>", "validation_rows": 4, "metrics": ["exact_match"]},
      {"name": "words", "path": str(tmp_path / "words.jsonl"), "format": "alpaca", "cluster": "spelling",
       "validation_rows": 4}]
  (tmp_path / "tasks.json").write_text(json.dumps(specs))
  workdir = tmp_path / "run"
  train_in_process(workdir, **{
      "data.local_tasks": (str(tmp_path / "tasks.json"),), "data.mixture": (),
      "data.held_out_clusters": ("business email",), "data.skip_bad_records": True,
      "evals.seen.every_steps": 0, "evals.held_out.at_start": True, "evals.seen.at_start": True,
      "train.steps": 6, "data.tokenizer.num_texts": 300, "data.tokenizer.vocab_size": 300})
  for step in (0, 6):
    results = json.load(open(workdir / "eval" / str(step) / "results.json"))
    assert set(results["tasks"]) == {"emails", "sums", "words"} and not results["unscored"]
    assert results["clusters"]["business email"]["group"] == "held_out" and results["held_out"] is not None
    assert results["tasks"]["sums"]["metric"] == "exact_match" and results["seen"] is not None
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  steps = [r for r in records if "loss" in r]
  assert steps[-1]["skipped_records"] == 1 and "truncated" in steps[-1]
  assert [r["step"] for r in records if "eval/held_out" in r] == [0, 6]


@pytest.mark.slow
def test_rerunning_a_finished_run_whose_evaluation_died_evaluates_it(uninterrupted, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted, workdir)
  shutil.rmtree(os.path.join(workdir, "eval", "12"))
  train_in_process(workdir)
  results = json.load(open(os.path.join(workdir, "eval", "12", "results.json")))
  assert results["step"] == 12 and set(results["clusters"]) == {"nli"}
  assert losses(workdir) == losses(uninterrupted)  # no step trained again
