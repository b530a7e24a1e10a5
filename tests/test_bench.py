import numpy as np
import pytest

from configs import tiny
from flan_jax import bench
from flan_jax.data import packing


def test_synthetic_batch_is_full_packed_rows_with_responses_weighted():
  batch = bench.synthetic_batch(rows=3, length=300, vocab=50)
  assert set(batch) == set(packing.BATCH_KEYS) and batch["inputs"].shape == (3, 300)
  assert (batch["segment_ids"] > 0).all() and batch["segment_ids"].max() > 2
  starts = batch["positions"] == 0
  assert starts.sum() == sum(len(np.unique(row)) for row in batch["segment_ids"])
  assert 0.3 < batch["loss_weights"].mean() < 0.7
  long_rows = bench.synthetic_batch(rows=2, length=4096, vocab=50)["segment_ids"]
  assert long_rows.min() > 0 and long_rows.max() == packing.MAX_SEGMENTS  # no padding: the last run


def test_packed_efficiency_of_examples_that_fill_rows_exactly():
  assert bench._packed_efficiency([50, 50] * 40, 100, "best_fit", rows=10) == 1.0
  assert bench._packed_efficiency([60] * 40, 100, "first_fit", rows=10) == pytest.approx(0.6)


def test_write_benchmarks_replaces_only_its_own_section(tmp_path):
  path = str(tmp_path / "BENCHMARKS.md")
  bench.write_benchmarks({"backend": "cpu", "device": "cpu", "ratio": 0.5}, path, ["peak"])
  bench.write_benchmarks({"backend": "gpu", "device": "NVIDIA H100", "ratio": 0.25}, path, ["peak"])
  bench.write_benchmarks({"backend": "cpu", "device": "cpu", "ratio": 0.75}, path, ["peak"])
  text = open(path).read()
  assert text.startswith("# Benchmarks") and text.count("## cpu: cpu") == 1 and "## gpu: NVIDIA H100" in text
  assert "| `ratio` | 0.75 |" in text and "| `ratio` | 0.25 |" in text and "| `ratio` | 0.5 |" not in text


def test_lora_memory_counts_adapters_and_their_optimizer_state():
  out = bench.lora_memory({}, tiny.get_config())
  d, q, kv, layers, rank = 2048, 32 * 64, 8 * 64, 16, 16  # Llama-3.2-1B; LoRA on wq, wk, wv, wo
  assert out["llama3_2_1b_lora16_trainable_params"] == layers * rank * ((d + q) * 2 + (d + kv) * 2)
  assert 1.2e9 < out["llama3_2_1b_full_trainable_params"] < 1.3e9
  adam_bytes = 2 * 4 * out["llama3_2_1b_lora16_trainable_params"]  # mu and nu in f32, plus a step count
  assert adam_bytes <= out["llama3_2_1b_lora16_optimizer_bytes"] < adam_bytes + 64
  assert out["lora16_over_full_optimizer_memory"] <= 0.05
