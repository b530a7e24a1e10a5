import json
import os
import signal

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from flan_jax import model as model_lib
from flan_jax import optim, sharding, train, workdirs
from flan_jax.data import packing, pipeline, render
from tests.helpers import load_config, small_step_config

MESHES = [dict(data=8, fsdp=1, tensor=1), dict(data=1, fsdp=8, tensor=1), dict(data=2, fsdp=2, tensor=2)]


def packed_batch(rows=8, length=32, vocab=64, seed=0):
  """Random rows of 1-4 packed examples with prompt (weight 0) and response (weight 1) parts, some padding."""
  rng = np.random.default_rng(seed)
  batch = {k: np.zeros((rows, length), np.int32) for k in packing.BATCH_KEYS}
  batch["loss_weights"] = np.zeros((rows, length), np.float32)
  for r in range(rows):
    start = 0
    for segment in range(1, rng.integers(2, 6)):
      n = int(rng.integers(4, 12))
      if start + n > length:
        break
      span = slice(start, start + n)
      batch["inputs"][r, span] = rng.integers(1, vocab, n)
      batch["targets"][r, span] = rng.integers(1, vocab, n)
      batch["segment_ids"][r, span] = segment
      batch["positions"][r, span] = np.arange(n)
      batch["loss_weights"][r, start + n // 2:start + n] = 1.0
      start += n
  return batch


def run_steps(config, mesh_config, optimizer, batches, devices=None, schedule=optax.constant_schedule(0.0)):
  """Params (as numpy) and metrics after one train step per batch on the given mesh (`schedule` is the
  learning rate the metrics report)."""
  mesh = sharding.make_mesh(mesh_config, devices)
  rules = sharding.rules(config.sharding_rules)
  model = model_lib.from_config(config.model)
  with sharding.context(mesh, rules):
    _, shardings = train.state_shapes(model, optimizer, mesh, rules)
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
    step = train.jit_train_step(model, optimizer, schedule, config, mesh, shardings)
    metrics = []
    for batch in batches:
      state, m = step(state, batch)
      metrics.append(jax.device_get(m))
  return jax.device_get(state.params), metrics


def test_same_loss_and_gradients_on_every_mesh():
  config = small_step_config()
  batch = packed_batch()
  sgd = optax.sgd(1.0)  # params after one step = initial params - gradients
  one_device = dict(data=1, fsdp=1, tensor=1)
  initial, _ = run_steps(config, one_device, optax.sgd(0.0), [batch], jax.devices()[:1])
  reference, [ref_metrics] = run_steps(config, one_device, sgd, [batch], jax.devices()[:1])
  ref_grads = jax.tree.map(np.subtract, initial, reference)
  assert ref_metrics["loss"] > 3.0
  for mesh_config in MESHES:
    params, [metrics] = run_steps(config, mesh_config, sgd, [batch])
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    grads = jax.tree.map(np.subtract, initial, params)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6), grads, ref_grads)


@pytest.mark.parametrize("normalization", ["token", "example"])
def test_gradient_accumulation_equals_one_big_batch(normalization):
  batch = packed_batch()
  results = []
  for microbatches in (1, 4):
    config = small_step_config(microbatches=microbatches)
    config.loss.normalization = normalization
    results.append(run_steps(config, dict(data=2, fsdp=1, tensor=1), optax.sgd(1.0), [batch], jax.devices()[:2]))
  (big, [big_metrics]), (accumulated, [acc_metrics]) = results
  np.testing.assert_allclose(acc_metrics["loss"], big_metrics["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), accumulated, big)


def test_overfits_one_batch():
  config = small_step_config()
  config.optim.update(dict(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0))
  optimizer, schedule = optim.make(config.optim, total_steps=150)
  _, metrics = run_steps(config, dict(data=-1, fsdp=1, tensor=1), optimizer, [packed_batch()] * 150)
  assert metrics[0]["loss"] > 3.5
  assert metrics[-1]["loss"] < 0.05


def test_mesh_errors_name_the_problem():
  assert dict(sharding.make_mesh(dict(data=2, fsdp=-1, tensor=1)).shape) == dict(data=2, fsdp=4, tensor=1)
  with pytest.raises(ValueError, match="mesh.data=3, mesh.fsdp=1, mesh.tensor=1 needs 3 devices, but there are 8"):
    sharding.make_mesh(dict(data=3, fsdp=1, tensor=1))
  with pytest.raises(ValueError, match="8 devices do not divide by 3"):
    sharding.make_mesh(dict(data=3, fsdp=-1, tensor=1))
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh(dict(data=-1, fsdp=-1, tensor=1))
  config = small_step_config()
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=8))
  with pytest.raises(ValueError, match=r"\['attention'\]\['wk'\].*dimension 1 \(2\) does not divide"):
    train.state_shapes(model_lib.from_config(config.model), optax.sgd(0.1), mesh, sharding.rules("tp"))
  with pytest.raises(ValueError, match="data.batch_size=8 must divide into train.microbatches=3"):
    sharding.check_batch(8, 3, sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1)))


def test_fsdp_shards_parameters_and_adam_moments_and_replicates_the_rest():
  config = small_step_config()
  mesh = sharding.make_mesh(dict(data=1, fsdp=8, tensor=1))
  rules = sharding.rules("fsdp")
  model = model_lib.from_config(config.model)
  with sharding.context(mesh, rules):
    adam, _ = optim.make(config.optim, total_steps=10)
    _, shardings = train.state_shapes(model, adam, mesh, rules)
    state = train.init_state(model, adam, mesh, shardings, jax.random.key(0))
  wq = state.params["block_0"]["attention"]["wq"]
  assert wq.sharding.spec[0] == "fsdp" and wq.addressable_shards[0].data.shape == (4, 4, 8)
  moments = [s for s in jax.tree.leaves(shardings.opt_state) if s.spec and s.spec[0] == "fsdp"]
  assert len(moments) == 2 * len(jax.tree.leaves(state.params)) - 2 * 5  # mu and nu, less the 1-d norm scales
  config.model.update(dict(d_model=256, mlp_dim=512))  # Adafactor factors dimensions of 128 and more
  config.optim.name = "adafactor"
  factored, _ = optim.make(config.optim, total_steps=10)
  with sharding.context(mesh, rules):
    model = model_lib.from_config(config.model)
    _, shardings = train.state_shapes(model, factored, mesh, rules)
    state = train.init_state(model, factored, mesh, shardings, jax.random.key(0))
  shardings_by_path = dict(jax.tree_util.tree_leaves_with_path(shardings.opt_state))
  factored = [path for path, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)
              if "v_row" in jax.tree_util.keystr(path) and "w_up" in jax.tree_util.keystr(path)]
  assert factored and all(shardings_by_path[path].spec == PartitionSpec() for path in factored)


def test_skip_nonfinite_drops_the_update_and_keeps_the_parameters():
  config = small_step_config(skip_nonfinite=True)
  batch = packed_batch()
  poisoned = dict(batch, loss_weights=batch["loss_weights"] * np.float32("nan"))
  initial, _ = run_steps(config, dict(data=-1, fsdp=1, tensor=1), optax.sgd(0.0), [batch])
  params, metrics = run_steps(config, dict(data=-1, fsdp=1, tensor=1), optax.sgd(0.1), [poisoned, batch])
  assert [m["skipped"] for m in metrics] == [1, 0]
  assert np.isnan(metrics[0]["loss"]) and np.isfinite(metrics[1]["loss"])
  one_good_step, _ = run_steps(config, dict(data=-1, fsdp=1, tensor=1), optax.sgd(0.1), [batch])
  jax.tree.map(np.testing.assert_array_equal, params, one_good_step)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, params, initial)))


def test_an_unusable_workdir_is_an_error_naming_it(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(SystemExit, match=f"workdir '{blocker}/run' is not writable"):
    workdirs.prepare(small_step_config(), str(blocker / "run"))
  workdirs.prepare(small_step_config(), str(tmp_path / "run"))
  assert '"d_model": 32' in (tmp_path / "run" / "config.json").read_text()


def test_lora_trains_only_the_adapters_with_optimizer_state_for_them_alone():
  config = small_step_config()
  config.model.update(dict(lora_rank=4, lora_dropout=0.1, lora_targets=("wq", "wv", "w_down")))
  config.optim.weight_decay = 0.1  # decay must not touch the frozen base either
  mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
  rules = sharding.rules(config.sharding_rules)
  model = model_lib.from_config(config.model)
  optimizer, schedule = optim.make(config.optim, total_steps=10)
  with sharding.context(mesh, rules):
    _, shardings = train.state_shapes(model, optimizer, mesh, rules)
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
    before = jax.device_get((state.params, state.frozen))
    step = train.jit_train_step(model, optimizer, schedule, config, mesh, shardings)
    for seed in range(3):
      state, metrics = step(state, packed_batch(seed=seed))
  adapters, base = jax.device_get((state.params, state.frozen))
  flat = dict(jax.tree_util.tree_leaves_with_path(adapters))
  assert {jax.tree_util.keystr(p) for p in flat} == {
      f"['block_{i}']['{m}']['{w}_lora_{ab}']" for i in range(2) for m, w in
      (("attention", "wq"), ("attention", "wv"), ("mlp", "w_down")) for ab in "ab"}
  jax.tree.map(np.testing.assert_array_equal, base, before[1])  # the base did not move
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(adapters), jax.tree.leaves(before[0])))
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
  assert moments == 2 * sum(x.size for x in jax.tree.leaves(adapters))  # Adam's mu and nu, adapters only


def test_the_logged_learning_rate_is_the_applied_one_after_a_skipped_update():
  config = small_step_config(skip_nonfinite=True)
  config.optim.update(dict(schedule="linear", warmup_steps=0, learning_rate=1.0, final_lr_fraction=0.0))
  batch = packed_batch()
  poisoned = dict(batch, loss_weights=batch["loss_weights"] * np.float32("nan"))
  optimizer, schedule = optim.make(config.optim, total_steps=10)
  _, metrics = run_steps(config, dict(data=-1, fsdp=1, tensor=1), optimizer, [batch, poisoned, batch],
                         schedule=schedule)
  rates = [float(m["learning_rate"]) for m in metrics]
  # The skipped update did not advance the schedule: the third step applies the second step's rate.
  assert rates == pytest.approx([float(schedule(0)), float(schedule(1)), float(schedule(1))]) and rates[0] > rates[1]


@pytest.mark.slow
def test_train_and_evaluate_in_process_writes_checkpoint_metrics_and_evaluators_at_their_cadence(tmp_path):
  """The whole job from Python, as `python -m flan_jax.train` runs it, with two evaluators at
  different cadences, and a rerun that has nothing left to do; the caller's config and SIGTERM
  handler are left as they were."""
  config = load_config("tiny")
  config.train.update(steps=4, log_every=2, checkpoint_every=2)
  config.data.update(seq_len=128, batch_size=8)
  config.data.tokenizer.update(vocab_size=512, num_texts=3000)
  config.model.update(d_model=64, num_layers=2, mlp_dim=128)
  config.evals.held_out.update(every_steps=2, max_examples=4, max_templates=1)
  config.evals.seen.update(max_examples=2, max_templates=1)
  before, handler = config.to_json(sort_keys=True), signal.getsignal(signal.SIGTERM)
  train.train_and_evaluate(config, str(tmp_path))
  assert config.to_json(sort_keys=True) == before
  assert signal.getsignal(signal.SIGTERM) is handler  # SIGTERM is the caller's again
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [2, 2, 4, 4] and "eval/seen" not in records[1]
  assert {"eval/held_out", "eval/seen"} <= set(records[-1])
  # Held out every 2 steps, seen at the end only: each evaluator's results at its own steps.
  at_2, at_4 = (json.loads((tmp_path / "eval" / str(step) / "results.json").read_text()) for step in (2, 4))
  assert "held_out" in at_2 and "seen" not in at_2 and {"held_out", "seen"} <= set(at_4) and at_4["step"] == 4
  assert json.loads((tmp_path / "config.json").read_text())["model"]["dtype"] in ("float32", "bfloat16")
  train.train_and_evaluate(config, str(tmp_path))
  assert len(open(tmp_path / "metrics.jsonl").readlines()) == 4


def test_the_streaming_paths_scan_is_written_once_and_read_at_restart(tmp_path, monkeypatch,
                                                                      tokenizer):
  config = load_config("tiny")
  stream = train.example_stream(config, str(tmp_path), tokenizer, render.Stats())
  [saved] = (tmp_path / "data_scan").glob("*.npz")
  monkeypatch.setattr(pipeline, "resolve_mixture", lambda *_: pytest.fail("scanned again"))
  again = train.example_stream(config, str(tmp_path), tokenizer, render.Stats())
  for i in range(50):
    if stream[i] is None:
      assert again[i] is None
    else:
      np.testing.assert_array_equal(stream[i]["inputs"], again[i]["inputs"])
  assert list((tmp_path / "data_scan").glob("*.npz")) == [saved]
