"""Prepared data: `prepare` writes the streaming path's examples to ArrayRecord shards, batches
read from them equal the streaming path's, a preparation resumes per shard, and a directory that
does not match the run, or a shard missing or cut short, is an error naming it."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from flan_jax import train
from flan_jax.data import pipeline, prepared, render, vocab
from flan_jax.data import tokenizer as tokenizer_lib
from tests.helpers import (ROOT, SMALL, copy_tokenizer, kill_9_after, load_config, losses,
                           make_hf_tokenizer, sentence, small_run_config, train_command,
                           write_jsonl)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
  """Two local training clusters (one bad row, some rows longer than seq_len) and a held-out one."""
  rng = random.Random(0)
  rows = lambda n, words, cluster: [{
      "instruction": sentence(rng, 6),
      "input": sentence(rng, words()),
      "output": f"{cluster} {i}",
      "cluster": cluster
  } for i in range(n)]
  train = rows(150, lambda: rng.randint(5, 60), "a") + rows(90, lambda: rng.randint(5, 20), "b")
  train[17] = {"instruction": "no output"}
  held = rows(20, lambda: 12, "held")
  return write_jsonl(tmp_path_factory.mktemp("prepared_rows") / "train.jsonl", train + held)


def small_mixture_config(rows_path, tokenizer_path):
  config = load_config("tiny")
  config.data.mixture = ()
  config.data.held_out_clusters = ("held", )
  config.data.skip_bad_records = True
  config.data.local_tasks = ({
      "name": "prep",
      "path": rows_path,
      "format": "alpaca",
      "cluster_field": "cluster",
      "metrics": ("exact_match", "rouge")  # a tuple, read back from the manifest as a list
  }, )
  config.data.seq_len = 64
  config.data.batch_size = 4
  config.data.shards = 2
  config.data.packing_bins = 8
  config.data.template.format_mix = {"flan": 1.0, "chatml": 1.0}
  config.data.tokenizer.model = tokenizer_path
  return config


@pytest.fixture
def small(tmp_path, monkeypatch, tokenizer, rows_file):
  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 50)
  config = small_mixture_config(rows_file, tokenizer.path)
  return config, str(tmp_path / "prepared")


def streaming_batches(config, tokenizer, stats, count):
  it = iter(
      pipeline.batches(config.data, pipeline.resolve_mixture(config.data), tokenizer, stats,
                       seed=config.seed))
  out = [next(it) for _ in range(count)]
  it.close()
  return out


def prepared_batches(directory, config, stats, count, state=None):
  manifest = prepared.read_manifest(directory)
  it = iter(
      pipeline.pack_batches(config.data, prepared.examples(directory, manifest, stats), stats,
                            seed=config.seed))
  if state is not None:
    it.set_state(state)
  out = [next(it) for _ in range(count)]
  state = it.get_state()
  it.close()
  return out, state


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_from_prepared_shards_equal_the_streaming_paths(small, num_workers):
  config, directory = small
  manifest = prepared.prepare(config, directory, num_workers=num_workers, log=lambda _: None)
  assert manifest["examples"] == 239 and manifest["shards"] == 5  # 240 training rows less a bad one
  assert manifest["mixture"]["skipped_row_count"] == 1 and manifest["truncated"] > 0
  assert sum(manifest["tasks"].values()) == 239 and set(manifest["tasks"]) == {"prep_a", "prep_b"}
  assert set(manifest["evaluation_sha256"]) == {"prep_held"}
  tokenizer = vocab.get_tokenizer(config.data, prepared.tokenizer_dir(directory))
  prepared.check(manifest, directory, config, tokenizer)
  stream_stats, prepared_stats = render.Stats(), render.Stats()
  # 6 batches of 4 x 64 tokens read past the 239 prepared examples: the stream starts over.
  expected = streaming_batches(config, tokenizer, stream_stats, 6)
  got, _ = prepared_batches(directory, config, prepared_stats, 6)
  for a, b in zip(expected, got):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert prepared_stats.truncated == stream_stats.truncated > 0


def test_a_prepared_stream_resumes_from_its_state(small):
  config, directory = small
  prepared.prepare(config, directory, log=lambda _: None)
  whole, _ = prepared_batches(directory, config, render.Stats(), 5)
  _, state = prepared_batches(directory, config, render.Stats(), 2)
  rest, _ = prepared_batches(directory, config, render.Stats(), 3, state=state)
  for a, b in zip(whole[2:], rest):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_a_killed_preparation_resumes_and_another_config_is_refused(small):
  config, directory = small
  prepared.prepare(config, directory, log=lambda _: None)
  first = open(os.path.join(directory, prepared.shard_name(3, 5)), "rb").read()
  os.remove(os.path.join(directory, prepared.shard_name(3, 5)))
  os.remove(os.path.join(directory, prepared.MANIFEST))
  logged = []
  prepared.prepare(config, directory, log=logged.append)
  assert "(1 to write here)" in logged[0]
  assert open(os.path.join(directory, prepared.shard_name(3, 5)), "rb").read() == first
  config.data.seq_len = 96
  with pytest.raises(
      ValueError, match=r"holds a preparation of another config: identity.data.seq_len: "
      r"prepared 64, this run 96"):
    prepared.prepare(config, directory, log=lambda _: None)


def test_a_run_that_does_not_match_the_preparation_is_refused_naming_the_difference(
    small, tmp_path):
  config, directory = small
  prepared.prepare(config, directory, log=lambda _: None)
  manifest = prepared.read_manifest(directory)
  tokenizer = vocab.get_tokenizer(config.data, prepared.tokenizer_dir(directory))
  config.data.batch_size = 8  # batching is the run's choice
  prepared.check(manifest, directory, config, tokenizer)
  config.data.held_out_clusters = ("b", )
  config.data.template.num_shots = 2
  with pytest.raises(
      ValueError, match=r"does not match this run: data.held_out_clusters: prepared \[\"held\"\], "
      r"this run \[\"b\"\]; data.template.num_shots: prepared 3, this run 2; "
      r"evaluation set prep_b: prepared null"):
    prepared.check(manifest, directory, config, tokenizer)
  make_hf_tokenizer(str(tmp_path / "other"), ["some other text"] * 10)
  other = tokenizer_lib.load(str(tmp_path / "other"))
  config = small_mixture_config(config.data.local_tasks[0]["path"], config.data.tokenizer.model)
  with pytest.raises(ValueError, match=r"tokenizer sha256: prepared \w+, this run \w+"):
    prepared.check(manifest, directory, config, other)


def test_a_missing_or_cut_shard_and_an_unfinished_preparation_are_errors_naming_them(small):
  config, directory = small
  manifest = prepared.prepare(config, directory, log=lambda _: None)
  path = os.path.join(directory, prepared.shard_name(2, 5))
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError,
                     match=rf"shard {path} (cannot be read|holds \d+ examples, not 50)"):
    prepared.examples(directory, manifest, render.Stats())
  os.remove(path)
  with pytest.raises(ValueError, match=rf"shard {path} cannot be read"):
    prepared.examples(directory, manifest, render.Stats())
  os.remove(os.path.join(directory, prepared.MANIFEST))
  with pytest.raises(FileNotFoundError,
                     match=r"no manifest.json \(not prepared, or its preparation did not finish"):
    prepared.read_manifest(directory)


@pytest.mark.slow
def test_prepare_then_train_equals_streaming_and_resumes_after_kill_9(tmp_path):
  """The command line: prepare the small tiny run, train on it with a worker process (killed, then
  rerun), and the losses are the streaming run's, every step, bit for bit."""
  streaming = str(tmp_path / "streaming")
  train.train_and_evaluate(small_run_config(), streaming)
  directory = str(tmp_path / "prepared")
  copy_tokenizer(streaming, directory)
  result = subprocess.run([
      sys.executable, "-m", "flan_jax.data", "prepare", "--config=configs/tiny.py",
      f"--out={directory}", "--num_workers=2", *SMALL
  ], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"train with --config.data.prepared={directory}" in result.stdout
  workdir = str(tmp_path / "on_prepared")
  command = train_command(workdir, f"--config.data.prepared={directory}", "--config.data.num_workers=1")
  assert 6 <= kill_9_after(command, workdir, 6) < 12
  result = subprocess.run([*command, "--verbosity=0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert losses(workdir) == losses(streaming)
  assert "prepared examples" in result.stderr and "decontamination" not in result.stderr
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["prepared"] == directory
