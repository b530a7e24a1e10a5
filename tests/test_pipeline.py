import random

import numpy as np
import pytest

from flan_jax.data import pipeline, render
from tests.helpers import load_config, sentence, write_jsonl


def _small(config):
  config.data.seq_len = 128
  config.data.batch_size = 4
  config.data.shards = 2
  config.data.packing_bins = 8
  return config


def _decoded_stream(config, tokenizer, num_batches):
  mix = pipeline.resolve_mixture(config.data)
  it = iter(pipeline.batches(config.data, mix, tokenizer, render.Stats(), seed=config.seed))
  return " ".join(tokenizer.decode(row) for _ in range(num_batches) for row in next(it)["inputs"])


def test_no_held_out_task_reaches_training(tiny_config, tokenizer):
  config = _small(tiny_config)
  # Every flan_mini NLI premise says "has exactly" or "only pet is"; no other task's text does.
  nli_marks = ("has exactly", "only pet is")
  config.data.held_out_clusters = ()
  text = _decoded_stream(config, tokenizer, 40)
  assert all(m in text for m in nli_marks)
  config.data.held_out_clusters = ("nli",)
  text = _decoded_stream(config, tokenizer, 40)
  assert not any(m in text for m in nli_marks)
  # paraphrase goes with nli (FLAN's exclusion): none of its templates' wording either.
  assert "paraphrase" not in text


def test_resume_from_saved_state_is_exact(tiny_config, tokenizer):
  config = _small(tiny_config)
  mix = pipeline.resolve_mixture(config.data)
  make = lambda: iter(pipeline.batches(config.data, mix, tokenizer, render.Stats(), seed=config.seed))
  uninterrupted = make()
  expected = [next(uninterrupted) for _ in range(12)]
  first = make()
  for _ in range(5):
    next(first)
  state = first.get_state()
  resumed = make()
  resumed.set_state(state)
  for want in expected[5:]:
    got = next(resumed)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def _taken(config, mix, tokenizer, count, state=None):
  """(count batches, the position after them, the Stats they reported), the iterator closed."""
  stats = render.Stats()
  it = iter(pipeline.batches(config.data, mix, tokenizer, stats, seed=config.seed))
  if state is not None:
    it.set_state(state)
  out = [next(it) for _ in range(count)]
  state = it.get_state()
  it.close()
  return out, state, stats


def test_worker_processes_build_batches_resume_exactly_and_report_their_counts(tiny_config, tokenizer):
  config = _small(tiny_config)
  config.data.seq_len = 48  # some examples are truncated
  mix = pipeline.resolve_mixture(config.data)
  in_process, _, _ = _taken(config, mix, tokenizer, 4)
  config.data.num_workers = 1  # one worker reads the whole stream: the same batches
  one_worker, _, _ = _taken(config, mix, tokenizer, 4)
  for want, got in zip(in_process, one_worker):
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])

  config.data.num_workers = 2
  expected, _, stats = _taken(config, mix, tokenizer, 6)
  assert set(expected[0]) == set(in_process[0])
  examples = sum(len(set(row[row > 0].tolist())) for b in expected for row in b["segment_ids"])
  rendered = sum(n for key, n in stats.renderings.items() if key.startswith("format:"))
  assert rendered >= examples and stats.truncated > 0  # the workers' counts reached this process
  first, state, _ = _taken(config, mix, tokenizer, 3)
  per_shard = pipeline.shard_states(state)  # as a checkpoint holds it
  assert len(per_shard) == config.data.shards
  resumed, _, _ = _taken(config, mix, tokenizer, 3, pipeline.join_shard_states(per_shard, 2))
  for want, got in zip(expected, first + resumed):
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_batches_are_deterministic_and_shaped(tiny_config, tokenizer):
  config = _small(tiny_config)
  mix = pipeline.resolve_mixture(config.data)
  a = next(iter(pipeline.batches(config.data, mix, tokenizer, render.Stats(), seed=1)))
  b = next(iter(pipeline.batches(config.data, mix, tokenizer, render.Stats(), seed=1)))
  c = next(iter(pipeline.batches(config.data, mix, tokenizer, render.Stats(), seed=2)))
  assert set(a) == {"inputs", "targets", "loss_weights", "segment_ids", "positions"}
  assert all(v.shape == (4, 128) and v.dtype == np.int32 for v in a.values())
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(a["inputs"], c["inputs"])


def test_processes_read_disjoint_shards(tiny_config, tokenizer):
  data = _small(tiny_config).data
  mix = pipeline.resolve_mixture(data)
  full = pipeline.mixed_records(mix, seed=0)
  shards = [pipeline.mixed_records(mix, seed=0)[p::2] for p in range(2)]
  assert [full[i][:2] for i in range(0, 20, 2)] == [shards[0][i][:2] for i in range(10)]
  assert [full[i][:2] for i in range(1, 20, 2)] == [shards[1][i][:2] for i in range(10)]
  with pytest.raises(ValueError, match="data.shards=2 must be a multiple of the 3 processes"):
    pipeline.batches(data, mix, tokenizer, render.Stats(), seed=0, process_index=0, process_count=3)
  # The global batch does not depend on how many processes build it.
  whole = next(iter(pipeline.batches(data, mix, tokenizer, render.Stats(), seed=0)))
  parts = [next(iter(pipeline.batches(data, mix, tokenizer, render.Stats(), seed=0, process_index=p,
                                      process_count=2))) for p in range(2)]
  assert parts[1]["inputs"].shape == (2, 128)
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([parts[0][key], parts[1][key]]), whole[key])


def test_mixture_rates_reach_the_stream(tiny_config):
  mix = pipeline.resolve_mixture(tiny_config.data)
  records = pipeline.mixed_records(mix, seed=0)
  names = [records[i][0] for i in range(20000)]
  for task, rate in mix.rates.items():
    assert abs(names.count(task) / len(names) - rate) < 0.01


def test_truncation_is_counted_not_fatal(tiny_config, tokenizer):
  config = _small(tiny_config)
  config.data.seq_len = 24
  mix = pipeline.resolve_mixture(config.data)
  stats = render.Stats()
  batch = next(iter(pipeline.batches(config.data, mix, tokenizer, stats, seed=0)))
  assert stats.truncated > 0
  assert batch["inputs"].shape == (4, 24)


def test_a_sequence_length_too_short_for_every_example_is_an_error(tiny_config, tokenizer):
  mix = pipeline.resolve_mixture(tiny_config.data)
  pipeline.check_seq_len(tiny_config.data, mix, tokenizer, seed=0)  # 512: fine
  tiny_config.data.seq_len = 8
  with pytest.raises(ValueError, match="data.seq_len=8 is too short: all of the first 100 examples"):
    pipeline.check_seq_len(tiny_config.data, mix, tokenizer, seed=0)


def test_an_element_renders_the_same_in_any_shard_and_shards_draw_differently(tiny_config, monkeypatch):
  monkeypatch.setattr(render.Renderer, "__call__", lambda self, element, rng: {"draw": int(rng.integers(1 << 30))})
  mix = pipeline.resolve_mixture(tiny_config.data)
  draws = lambda index, count: [e["draw"] for e in pipeline.examples(
      tiny_config.data, mix, None, render.Stats(), seed=0, shard_index=index, shard_count=count)[:100 // count]]
  whole, first, second = draws(0, 1), draws(0, 2), draws(1, 2)
  assert first == whole[0:100:2] and second == whole[1:100:2]
  assert all(a != b for a, b in zip(first, second))  # before: shard k's element i drew what every shard's i drew


def _scan_config(tmp_path, rows):
  config = load_config("tiny")
  config.data.mixture = ()
  config.data.held_out_clusters = ()
  path = write_jsonl(tmp_path / "rows.jsonl", rows)
  config.data.local_tasks = ({"name": "scan_cache", "path": path, "format": "alpaca", "cluster": "a"},)
  return config


def test_a_scan_saved_reads_back_and_its_checksum_follows_its_inputs(tmp_path):
  rng = random.Random(0)
  rows = [{"instruction": sentence(rng, 5), "input": sentence(rng, 20), "output": "x"} for _ in range(50)]
  rows[9] = dict(rows[4])
  config = _scan_config(tmp_path, rows)
  mix = pipeline.resolve_mixture(config.data)
  pipeline.write_mixture(mix, str(tmp_path / "scan.npz"))
  read = pipeline.read_mixture(config.data, str(tmp_path / "scan.npz"))
  assert read.train == mix.train and read.rates == mix.rates and read.duplicates == mix.duplicates
  assert read.sizes == mix.sizes == {"scan_cache": 49}
  np.testing.assert_array_equal(read.kept["scan_cache"], mix.kept["scan_cache"])
  checksum = pipeline.scan_checksum(config.data)
  config.data.template.format = "chatml"  # rendering is not the scan's
  config.data.seq_len = 64
  assert pipeline.scan_checksum(config.data) == checksum
  config.data.deduplication.mode = "off"
  assert pipeline.scan_checksum(config.data) != checksum
  records = mix.train[0].source("train")
  records[30] = {**records[30], "answer": "y"}  # one training row edited, in the registered task itself
  changed = pipeline.scan_checksum(config.data)
  config.data.deduplication.mode = "exact"
  assert pipeline.scan_checksum(config.data) not in (checksum, changed)
