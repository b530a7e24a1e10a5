import dataclasses
import shutil

import pytest
from etils import epath
import etils.epath.testing  # noqa: F401  (epath.testing)
from etils.epath import gpath
from tensorboard.backend.event_processing import event_accumulator

from flan_jax import checkpoint, metric_writer, workdirs
from flan_jax.data import vocab
from flan_jax.evaluators import zero_shot


def test_default_workdir_names():
  assert workdirs.default("configs/tiny.py") == "workdirs/tiny"
  assert workdirs.default("configs/flan2021.py:held_out=nli") == "workdirs/flan2021_held_out=nli"


def test_a_run_is_tied_to_its_tokenizer(tokenizer, tmp_path):
  checksum = workdirs.check_tokenizer(str(tmp_path), tokenizer, write=True)
  assert (tmp_path / "tokenizer.sha256").read_text().split()[0] == checksum
  assert workdirs.check_tokenizer(str(tmp_path), tokenizer, write=False) == checksum  # the same one: fine
  other_file = tmp_path / "other.model"
  shutil.copy(tokenizer.path, other_file)
  with open(other_file, "ab") as f:
    f.write(b"\0")
  other = dataclasses.replace(tokenizer, path=str(other_file))
  with pytest.raises(ValueError, match=r"tokenizer.sha256: this run was trained with another tokenizer"):
    workdirs.check_tokenizer(str(tmp_path), other, write=True)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs:// paths served from tmp_path/bucket through etils.epath's test hooks: whatever reaches the
  files there went through epath (os.path on "gs://b/run" would make a local "gs:" directory instead)."""
  local = lambda path: str(tmp_path / "bucket" / str(path).removeprefix("gs://")) if str(path).startswith("gs://") else path
  one = lambda fn: lambda original, path, *args, **kwargs: fn(original, local(path), *args, **kwargs)
  two = lambda original, path, dst, *args, **kwargs: original(local(path), local(dst), *args, **kwargs)
  call = lambda original, *args, **kwargs: original(*args, **kwargs)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else gs:// goes to TensorFlow's GCS client
  names = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat", "walk")
  with epath.testing.mock_epath(**{name: one(call) for name in names}, rename=two, replace=two, copy=two):
    yield tmp_path / "bucket"


def test_a_bucket_workdir_gets_its_tokenizer_metrics_tensorboard_and_results_through_epath(tiny_config, bucket,
                                                                                           tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  tiny_config.data.tokenizer.update(dict(vocab_size=512, num_texts=3000))  # quick to train
  workdir = "gs://b/run"
  assert str(checkpoint.directory(workdir)) == "gs://b/run/checkpoints"  # not made into a local path
  tokenizer = vocab.get_tokenizer(tiny_config.data, workdirs.tokenizer_dir(workdir))  # trained, then cached
  assert tokenizer.path.startswith("gs://b/run/tokenizer/") and tokenizer.encode("hello")
  assert vocab.get_tokenizer(tiny_config.data, workdirs.tokenizer_dir(workdir)).path == tokenizer.path  # read back
  workdirs.check_tokenizer(workdir, tokenizer, write=True)
  writer = metric_writer.Writer(workdir, total_steps=4, resumed_step=0)
  writer.write(2, {"loss": 1.5, "learning_rate": 1e-3, "grad_norm": 1.0, "tokens_per_s": 10.0, "mfu_vs_measured_peak": 0.1})
  writer.write_eval(2, {"eval/held_out": 40.0})
  zero_shot.write_results({"held_out": 40.0, "seen": None, "clusters": {}, "tasks": {}}, workdir, 2)
  assert metric_writer.Writer(workdir, total_steps=4, resumed_step=1).lines == []  # resumed at 1: the step-2 records go
  assert not (tmp_path / "gs:").exists()
  written = {str(p.relative_to(bucket)) for p in bucket.rglob("*") if p.is_file()}
  assert {"b/run/tokenizer.sha256", "b/run/metrics.jsonl", "b/run/eval/2/results.json", "b/run/eval/2/results.md"} <= written
  events = event_accumulator.EventAccumulator(str(bucket / "b/run/tensorboard"))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(2, 1.5)]
  assert [(e.step, e.value) for e in events.Scalars("eval/held_out")] == [(2, 40.0)]
  assert sum(name.startswith("b/run/tokenizer/spm_") for name in written) == 1
