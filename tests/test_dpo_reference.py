"""Precomputed DPO reference log-probabilities: each training pair's stored sums are its answers
scored alone by the starting model; a restart reads them, other inputs compute new ones; what
cannot be precomputed is an error naming its key."""

import numpy as np
import pytest

from flan_jax import checkpoint, dpo_reference, sharding, train
from flan_jax.data import pipeline, render, vocab
from flan_jax.model import from_config
from tests.helpers import (VOCABULARY, brute_force_log_likelihood, load_config, one_device_mesh,
                           write_jsonl)


def test_auto_is_lora_s_base_with_lora_else_precomputed():
  assert dpo_reference.resolve("auto", 8) == "adapters_off"
  assert dpo_reference.resolve("auto", 0) == "precomputed"
  assert dpo_reference.resolve("precomputed", 8) == "precomputed"
  with pytest.raises(ValueError, match="'adapters_off' needs LoRA"):
    dpo_reference.resolve("adapters_off", 0)
  assert dpo_reference.resolve("frozen_copy", 0) == "frozen_copy"
  with pytest.raises(ValueError, match="'frozen_copy' is for full fine-tuning"):
    dpo_reference.resolve("frozen_copy", 8)
  with pytest.raises(ValueError, match="loss.dpo_reference='copy'"):
    dpo_reference.resolve("copy", 0)


def _config(tmp_path, checkpoint_dir, seq_len=128):
  rng = np.random.default_rng(0)
  rows = [{"prompt": f"Tell me about the {' '.join(rng.choice(VOCABULARY, 2))}.",
           "chosen": " ".join(rng.choice(VOCABULARY, int(rng.integers(2, 6)))),
           "rejected": " ".join(rng.choice(VOCABULARY, int(rng.integers(2, 6))))}
          for _ in range(30)]
  rows[7]["chosen"] = " ".join(rng.choice(VOCABULARY, 200))  # does not fit: skipped, no sums
  pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
  config = load_config("dpo", f"checkpoint={checkpoint_dir},pairs={pairs},lora=0,held_out=4")
  config.data.seq_len, config.data.rows_per_shard, config.data.shards = seq_len, 4, 1
  config.model.dtype = "float32"
  return config


def _load_or_compute(config, workdir, mesh):
  sharding.resolve_batch_size(config, mesh)
  mix = pipeline.resolve_mixture(config.data)
  tokenizer = vocab.get_tokenizer(config.data, str(workdir / "tokenizer"))
  model = from_config(config.model)
  rules = sharding.rules(config.sharding_rules)
  with sharding.context(mesh, rules):
    shapes = sharding.param_shapes(model, mesh, rules)
    sums = dpo_reference.load_or_compute(config, str(workdir), mix, tokenizer, model, shapes, mesh)
  return sums, mix, tokenizer, model, shapes


def test_stored_sums_are_each_pair_scored_alone_and_a_restart_reads_them(
    tmp_path, chat_checkpoint, monkeypatch):
  config, mesh = _config(tmp_path, chat_checkpoint[0]), one_device_mesh()
  sums, mix, tokenizer, model, shapes = _load_or_compute(config, tmp_path, mesh)
  (task,) = mix.train
  assert sums[task.name].shape == (26, 2) and config.data.batch_size == 4
  renderer = render.Renderer(config.data, tokenizer, mix.train, render.Stats())
  records = task.source(task.splits[0])
  params = checkpoint.restore_params(config.train.init_from, shapes)[1]
  for index in range(26):
    features = renderer((task.name, index, records[index]), np.random.default_rng(0))
    if index == 7:
      assert features is None and np.isnan(sums[task.name][7]).all()
      continue
    for side in (1, 2):  # the chosen, then the rejected sequence of the pair's features
      part = {k: v[features["preference"] == side] for k, v in features.items()}
      tokens = np.concatenate([part["inputs"][:1], part["targets"]])
      weights = np.concatenate([[0], part["loss_weights"]])
      assert sums[task.name][index, side - 1] == pytest.approx(
          brute_force_log_likelihood(model, params, tokens, weights), rel=1e-5, abs=1e-4)
  # 25 pairs of ~60 tokens, two to a row of 128, four rows a batch: several batches, the last short.
  assert len(list((tmp_path / "dpo_reference").iterdir())) == 1

  monkeypatch.setattr(dpo_reference, "compute", lambda *args: pytest.fail("recomputed"))
  again, *_ = _load_or_compute(config, tmp_path, mesh)
  np.testing.assert_array_equal(again[task.name], sums[task.name])
  monkeypatch.undo()
  _load_or_compute(_config(tmp_path, chat_checkpoint[0], seq_len=256), tmp_path, mesh)
  assert len(list((tmp_path / "dpo_reference").iterdir())) == 2  # other inputs: their own sums


def test_pairs_must_render_one_way_and_dpo_starts_from_a_checkpoint(tmp_path):
  config = load_config("tiny")
  config.data.template.preamble_rate = 0.5
  with pytest.raises(ValueError, match="data.template.preamble_rate=0"):
    dpo_reference.load_or_compute(config, "/w", None, None, None, None, None)
  config.loss.kind = "dpo"
  with pytest.raises(ValueError, match="set train.init_from"):
    train.train_and_evaluate(config, str(tmp_path))
