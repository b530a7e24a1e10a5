"""DPO: the loss and its gradient equal the paper's formula computed sequence by sequence with full
logits, on unpacked and packed batches; LoRA's reference (adapters off) is the frozen base loaded on
its own; a fresh LoRA run's first loss is log 2 with a zero margin; microbatches add up to the
batch."""

import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from flan_jax import checkpoint, dpo, lora, optim, plan, sharding, train
from flan_jax import loss as loss_lib
from flan_jax.data import packing
from flan_jax.evaluators import pairwise, voting
from flan_jax.model import Decoder, forward, from_config
from tests.helpers import (ROOT, VOCABULARY, brute_force_log_likelihood, free_port, kill_9_after,
                           losses, one_device_mesh, small_step_config, write_jsonl)

SEQ_LEN = 48


def _config(**loss):
  config = small_step_config()
  config.model.update(dict(lora_rank=4, lora_targets=("wq", "wv", "w_down")))
  config.loss.update(dict(kind="dpo", dpo_beta=0.5, **loss))
  return config


def _answer(prompt, answer):
  """(tokens, weights): BOS, the prompt, the answer and EOS, the answer and EOS weighted."""
  tokens = np.asarray([2, *prompt, *answer, 1], np.int32)
  return tokens, np.asarray([0] * (1 + len(prompt)) + [1] * (len(answer) + 1), np.int32)


def _pairs(count, seed=0):
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(count):
    prompt = rng.integers(3, 64, rng.integers(3, 9))
    pairs.append([_answer(prompt, rng.integers(3, 64, rng.integers(2, 7))) for _ in range(2)])
  return pairs


def _unpacked(pairs):
  """A batch of one pair per row."""
  rows = []
  for chosen, rejected in pairs:
    features, _ = packing.pair_features(chosen, rejected, SEQ_LEN)
    pad = lambda x: np.pad(x, (0, SEQ_LEN - len(x)))
    rows.append({
        "inputs": pad(features["inputs"]),
        "targets": pad(features["targets"]),
        "loss_weights": pad(features["loss_weights"]),
        "segment_ids": pad(features["preference"]),
        "positions": pad(features["pair_positions"]),
        "preference": pad(features["preference"])
    })
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def _packed(pairs, rows=None, features=None):
  """A batch packed by the pipeline's packer: several pairs per row (their pair_features, or
  `features` given)."""
  features = features or [packing.pair_features(c, r, SEQ_LEN)[0] for c, r in pairs]
  ds = grain.MapDataset.source(features).to_iter_dataset()
  packed = list(packing.pack(ds, SEQ_LEN, packer="best_fit", num_bins=4, seed=0, pairs=True))[:rows]
  return {k: jnp.asarray(np.stack([r[k] for r in packed])) for k in packed[0]}


@pytest.fixture(scope="module")
def models():
  """(LoRA model, adapters with random B, base params, the model without LoRA)."""
  config = _config()
  model = from_config(config.model)
  zeros = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), zeros, zeros, zeros)["params"])
  adapters, base = lora.split(params)
  keys = iter(jax.random.split(jax.random.key(1), 100))
  adapters = jax.tree_util.tree_map_with_path(
      lambda path, x: 0.3 * jax.random.normal(next(keys), x.shape)
      if "lora_b" in jax.tree_util.keystr(path) else x, adapters)
  plain = config.model.copy_and_resolve_references()
  plain.lora_rank = 0
  return model, adapters, base, from_config(plain)


def _log_prob(model, params, tokens, weights):
  """One sequence alone, full log-softmax: its weighted targets' summed log-probability."""
  f = packing.example_features(tokens, weights)
  return _sequence_log_prob(model, params, f["inputs"], f["targets"], f["loss_weights"])


@functools.partial(jax.jit, static_argnums=0)
def _sequence_log_prob(model, params, inputs, targets, weights):
  inputs = inputs[None]
  hidden = model.apply({"params": params}, inputs,
                       jnp.arange(inputs.shape[1])[None], jnp.ones_like(inputs))
  log_probs = jax.nn.log_softmax(
      hidden[0] @ model.apply({"params": params}, method=Decoder.unembedding))
  return jnp.sum(log_probs[jnp.arange(len(targets)), targets] * weights)


def _dpo_formula(policy, reference, pairs, beta):
  """-log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r))), averaged over pairs; `policy` and
  `reference` map an answer to its log-probability."""
  terms = []
  for chosen, rejected in pairs:
    ratio = lambda answer: policy(answer) - reference(answer)
    terms.append(-jax.nn.log_sigmoid(beta * (ratio(chosen) - ratio(rejected))))
  return jnp.mean(jnp.stack(terms))


def _direct_loss(adapters, base, model, plain, pairs, beta):
  """The formula with LoRA: the reference is the base model without LoRA."""
  return _dpo_formula(lambda answer: _log_prob(model, lora.combine(adapters, base), *answer),
                      lambda answer: _log_prob(plain, base, *answer), pairs, beta)


@pytest.mark.parametrize("layout", ["unpacked", "packed"])
def test_loss_and_gradient_equal_the_papers_formula(models, layout):
  model, adapters, base, plain = models
  config, pairs = _config(), _pairs(6)
  batch = _unpacked(pairs) if layout == "unpacked" else _packed(pairs)
  if layout == "packed":
    assert batch["segment_ids"].max() >= 4  # rows hold several pairs
  assert int(dpo.totals(batch)["pairs"]) == len(pairs)

  def ours(a):
    return train.loss_fn(a, base, model, batch, dpo.totals(batch), config.loss, jax.random.key(0))

  (value, sums), grads = jax.value_and_grad(ours, has_aux=True)(adapters)
  expected, expected_grads = jax.value_and_grad(_direct_loss)(adapters, base, model, plain, pairs,
                                                              0.5)
  assert float(value) == pytest.approx(float(expected), rel=1e-5)
  assert float(expected) != pytest.approx(math.log(2), abs=1e-3)  # the adapters moved the policy
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads,
               expected_grads)
  accuracy = sums["rewards/accuracy"] / len(pairs)
  assert 0 < accuracy < 1 and float(sums["rewards/margin"]) == pytest.approx(
      float(sums["rewards/chosen"] - sums["rewards/rejected"]), rel=1e-5)


def test_full_fine_tuning_with_precomputed_reference_sums_gives_the_papers_formula(models):
  """Without LoRA, the batch carries the reference's sums (packing.with_reference) and the loss and
  its gradient are the formula's with those sums."""
  _, _, base, plain = models
  keys = iter(jax.random.split(jax.random.key(2), 100))
  policy = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(next(keys), x.shape), base)
  pairs, beta = _pairs(6), 0.5
  reference = [[float(_log_prob(plain, base, *answer)) for answer in pair] for pair in pairs]
  batch = _packed(pairs, features=[
      packing.with_reference(packing.pair_features(c, r, SEQ_LEN)[0], *sums)
      for (c, r), sums in zip(pairs, reference)])
  assert batch["segment_ids"].max() >= 4
  loss_config = _config(dpo_reference="precomputed").loss

  def ours(p):
    return train.loss_fn(p, {}, plain, batch, dpo.totals(batch), loss_config, jax.random.key(0))

  (value, _), grads = jax.value_and_grad(ours, has_aux=True)(policy)
  sums = {id(a): r for pair, refs in zip(pairs, reference) for a, r in zip(pair, refs)}
  expected, expected_grads = jax.value_and_grad(lambda p: _dpo_formula(
      lambda answer: _log_prob(plain, p, *answer), lambda answer: sums[id(answer)], pairs,
      beta))(policy)
  assert float(value) == pytest.approx(float(expected), rel=1e-5)
  assert float(expected) != pytest.approx(math.log(2), abs=1e-3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads,
               expected_grads)


def test_the_lora_reference_is_the_frozen_base_loaded_on_its_own(models):
  model, adapters, base, plain = models
  batch = _packed(_pairs(6))
  settings = dict(chunk_len=8, dtype="float32")
  reference, _ = loss_lib.token_nll(*forward(lora.without_adapters(model), base, batch, {}),
                                    batch["targets"], **settings)
  frozen_base, _ = loss_lib.token_nll(*forward(plain, base, batch, {}), batch["targets"],
                                      **settings)
  np.testing.assert_array_equal(reference, frozen_base)
  off = jax.tree.map(jnp.zeros_like, adapters)  # the adapted model with its adapters off
  adapters_off, _ = loss_lib.token_nll(*forward(model, lora.combine(off, base), batch, {}),
                                       batch["targets"], **settings)
  np.testing.assert_array_equal(reference, adapters_off)
  policy, _ = loss_lib.token_nll(*forward(model, lora.combine(adapters, base), batch, {}),
                                 batch["targets"], **settings)
  assert not np.allclose(policy, reference)


def _steps(config, mesh, batch, count: int) -> dict:
  """The metrics of the count-th train step on `batch` from a fresh state on `mesh`."""
  rules = sharding.rules(config.sharding_rules)
  model = from_config(config.model)
  optimizer, schedule = optim.make(config.optim, total_steps=10)
  with sharding.context(mesh, rules):
    _, shardings = train.state_shapes(model, optimizer, mesh, rules,
                                      frozen_copy=config.loss.dpo_reference == "frozen_copy")
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
    step = train.jit_train_step(model, optimizer, schedule, config, mesh, shardings)
    for _ in range(count):
      state, metrics = step(state, batch)
  return jax.device_get(metrics)


@pytest.mark.parametrize("variant, length_normalize, sft_weight", [("sigmoid", False, 0.0),
                                                                   ("ipo", True, 0.5)])
def test_a_fresh_lora_run_starts_at_log_2_and_microbatches_add_up(variant, length_normalize,
                                                                  sft_weight):
  config = _config(dpo_variant=variant,
                   dpo_length_normalize=length_normalize,
                   dpo_sft_weight=sft_weight)
  batch = _packed(_pairs(40), rows=config.data.batch_size)
  results = []
  for microbatches in (1, 2):
    config.train.microbatches = microbatches
    results.append(_steps(config, one_device_mesh(), batch, 1))
  first, halves = results
  beta = config.loss.dpo_beta
  zero_margin_loss = math.log(2) if variant == "sigmoid" else (1 / (2 * beta))**2
  # The adapters' B starts at zero, so the policy is the reference: margins 0 but for float32
  # rounding (the policy's pass, kept for its backward, is compiled apart from the reference's).
  for key in ("rewards/margin", "rewards/chosen", "rewards/rejected", "kl"):
    assert abs(first[key]) < 1e-6, key
  assert first["loss"] == pytest.approx(zero_margin_loss + sft_weight * first["nll"], rel=1e-6)
  for key in ("loss", "nll", "grad_norm", "rewards/margin"):
    assert halves[key] == pytest.approx(first[key], rel=1e-5, abs=1e-6)
  assert first["grad_norm"] > 0


def test_full_fine_tuning_with_a_frozen_copy_trains_as_with_precomputed_sums():
  """The two full fine-tuning references agree step by step: a frozen copy of the starting
  parameters run in the step, and their sums computed beforehand and carried by the batch."""
  config = _config()
  config.model.lora_rank = 0
  config.optim.update(dict(learning_rate=1e-2, warmup_steps=0))
  model, mesh = from_config(config.model), one_device_mesh()
  optimizer, _ = optim.make(config.optim, total_steps=10)
  rules = sharding.rules(config.sharding_rules)
  with sharding.context(mesh, rules):
    _, shardings = train.state_shapes(model, optimizer, mesh, rules)
    start = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0)).params
  pairs = _pairs(40)
  batch = _packed(pairs, rows=config.data.batch_size, features=[
      packing.with_reference(packing.pair_features(c, r, SEQ_LEN)[0],
                             *(float(_log_prob(model, start, *answer)) for answer in (c, r)))
      for c, r in pairs])
  figures = {}
  for reference in ("precomputed", "frozen_copy"):
    config.loss.dpo_reference = reference
    figures[reference] = [_steps(config, mesh, batch, count) for count in (1, 2)]
  for count in range(2):
    pre, copy = figures["precomputed"][count], figures["frozen_copy"][count]
    for key in ("loss", "grad_norm", "rewards/margin", "kl"):
      assert copy[key] == pytest.approx(pre[key], rel=1e-4, abs=1e-5), (count, key)
  assert figures["frozen_copy"][0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
  assert figures["frozen_copy"][1]["rewards/margin"] > 1e-3  # the second step sees a moved policy


def _pairs_file(path, count):
  """Preference pairs with a pattern to learn: the chosen answer names the prompt's thing, the
  rejected one refuses; prompts as strings and as messages."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(count):
    thing = " ".join(rng.choice(VOCABULARY, 2))
    prompt = f"Tell me about the {thing}."
    rows.append({
        "prompt":
        prompt if i % 2 else [{
            "role": "user",
            "content": prompt
        }],
        "chosen":
        f"The {thing} is fine." if i % 2 else [{
            "role": "assistant",
            "content": f"The {thing} is fine."
        }],
        "rejected":
        "I would rather not." if i % 2 else [{
            "role": "assistant",
            "content": "I would rather not."
        }]
    })
  return write_jsonl(path, rows)


@pytest.mark.slow
@pytest.mark.parametrize("lora, reference", [(4, "auto"), (0, "auto"), (0, "frozen_copy")])
def test_configs_dpo_trains_scores_held_out_pairs_and_resumes_after_kill_9(
    tmp_path, chat_checkpoint, lora, reference):
  """LoRA (the reference: adapters off), and full fine-tuning (the reference precomputed, or a
  frozen copy read from the checkpoint at every start)."""
  pairs = _pairs_file(tmp_path / "pairs.jsonl", 80)
  command = lambda workdir: [
      sys.executable, "-m", "flan_jax.train",
      f"--config=configs/dpo.py:checkpoint={chat_checkpoint[0]},pairs={pairs},"
      f"held_out=16,lora={lora}", f"--workdir={workdir}", "--config.train.steps=10",
      "--config.train.log_every=1", "--config.train.checkpoint_every=3",
      "--config.data.seq_len=256", "--config.data.rows_per_shard=4", "--config.data.shards=2",
      "--config.loss.chunk_len=32", "--config.optim.learning_rate=1e-2",
      "--config.optim.warmup_steps=1", "--config.evals.preference.batch_size=8",
      f"--config.loss.dpo_reference={reference}"
  ]
  whole = str(tmp_path / "whole")
  result = subprocess.run(command(whole), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in open(os.path.join(whole, "metrics.jsonl"))]
  trained = [r for r in records if "loss" in r]
  assert [r["step"] for r in trained] == list(range(1, 11))
  assert all(set(dpo.METRICS) <= set(r) for r in trained)
  assert trained[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
  assert trained[-1][
      "rewards/accuracy"] == 1.0 and trained[-1]["loss"] < 0.3  # the pattern was learnt
  results = {
      step: json.load(open(os.path.join(whole, "eval", str(step), "preference", "results.json")))
      for step in (0, 10)
  }
  assert results[0][
      "pairs"] == 16 and results[0]["reward"]["accuracy"] == 50.0  # adapters at zero: all ties
  assert results[10]["reward"]["accuracy"] == 100.0 and results[10]["reward"]["ci_low"] > 50

  resumed = str(tmp_path / "resumed")
  assert 3 <= kill_9_after(command(resumed), resumed, 5) < 10
  stored = sorted(epath.Path(resumed).glob("dpo_reference/*.npz"))
  assert len(stored) == (0 if lora or reference == "frozen_copy" else 1)
  written = [path.stat().mtime for path in stored]
  result = subprocess.run(command(resumed), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert losses(resumed) == losses(whole)
  assert [path.stat().mtime for path in stored] == written  # read back, not recomputed


@pytest.mark.slow
def test_two_processes_precompute_the_reference_and_train_as_one(tmp_path, chat_checkpoint):
  """Full fine-tuning under JAX's multi-process runtime: two processes of four devices each score
  the pairs (each giving its rows of every batch) and train as one process of eight does."""
  pairs = _pairs_file(tmp_path / "pairs.jsonl", 80)
  command = [
      sys.executable, "-m", "flan_jax.train",
      f"--config=configs/dpo.py:checkpoint={chat_checkpoint[0]},pairs={pairs},held_out=16,lora=0",
      "--config.train.steps=3", "--config.train.log_every=1", "--config.data.seq_len=256",
      "--config.data.rows_per_shard=2", "--config.data.shards=2", "--config.loss.chunk_len=32",
      "--config.optim.learning_rate=1e-3", "--config.optim.warmup_steps=0",
      "--config.evals.preference.batch_size=8", "--config.mesh.data=-1", "--config.mesh.fsdp=1"]
  one, two = tmp_path / "one", tmp_path / "two"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run([*command, f"--workdir={one}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  result = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "4", *command,
                           f"--workdir={two}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PORT": str(free_port())})
  assert result.returncode == 0, result.stderr[-3000:]
  [alone], [joined] = (list((w / "dpo_reference").glob("*.npz")) for w in (one, two))
  assert alone.name == joined.name
  np.testing.assert_allclose(np.load(joined)["pairs"], np.load(alone)["pairs"], rtol=1e-6)
  assert losses(str(two)) == pytest.approx(losses(str(one)), rel=1e-4)


@pytest.mark.slow
def test_dpo_goes_on_from_a_lora_run_s_workdir_its_adapters_folded_in(tmp_path, chat_checkpoint):
  """configs/dpo.py:checkpoint=<a run's workdir> (as after SFT): the run starts from that run's
  model, a LoRA run's adapters merged into its base: the same log-likelihoods."""
  pairs = _pairs_file(tmp_path / "pairs.jsonl", 40)
  common = ["--config.data.seq_len=256", "--config.data.rows_per_shard=2", "--config.data.shards=2",
            "--config.loss.chunk_len=32", "--config.evals.preference.batch_size=8"]
  first, second = tmp_path / "first", tmp_path / "second"
  for source, workdir, steps in ((chat_checkpoint[0], first, 3), (first, second, 1)):
    result = subprocess.run([
        sys.executable, "-m", "flan_jax.train",
        f"--config=configs/dpo.py:checkpoint={source},pairs={pairs},held_out=8,lora=4",
        f"--workdir={workdir}", f"--config.train.steps={steps}",
        "--config.optim.learning_rate=1e-2", "--config.optim.warmup_steps=0", *common
    ], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
  # The second run's step 0 is the first run's end: the same held-out likelihoods.
  at = lambda workdir, step: json.load(
      open(workdir / "eval" / str(step) / "preference" / "results.json"))["likelihood"]
  assert at(second, 0) == at(first, 3) and at(first, 3) != at(first, 0)

  adapter_fields = {**json.loads((first / "config.json").read_text())["model"], "dtype": "float32"}
  step, adapted, _ = checkpoint.load_for_inference(adapter_fields, workdir=str(first),
                                                   init_from=chat_checkpoint[0])
  plain = {**adapter_fields, "lora_rank": 0}
  _, _, target = sharding.inference_placement(from_config(plain))
  merged = checkpoint.restore_pretrained(str(first), target)
  base = checkpoint.restore_params(chat_checkpoint[0], target)[1]
  tokens = np.arange(3, 40, dtype=np.int32)
  weights = np.ones_like(tokens)
  score = lambda fields, params: brute_force_log_likelihood(from_config(fields), params, tokens,
                                                            weights)
  assert step == 3
  assert score(plain, merged) == pytest.approx(score(adapter_fields, adapted), rel=1e-5)
  assert score(plain, merged) != pytest.approx(score(plain, base), rel=1e-3)


@pytest.mark.slow
def test_the_judges_exported_pairs_train_with_configs_dpo(tmp_path, chat_checkpoint):
  """`judge --export_pairs`, then `train --config configs/dpo.py` on that file: one command each."""
  rng = np.random.default_rng(1)
  prompts = [f"Tell me about the {' '.join(rng.choice(VOCABULARY, 2))}." for _ in range(40)]
  answers = lambda words: [{
      "prompt": p,
      "answer": " ".join(rng.choice(VOCABULARY, words))
  } for p in prompts]
  a, b = write_jsonl(tmp_path / "a.jsonl", answers(3)), write_jsonl(tmp_path / "b.jsonl",
                                                                    answers(6))
  exported = tmp_path / "pairs.jsonl"
  # People voted on the first 20 pairs (as the voting page stores votes); the judge reads all 40.
  (tmp_path / "judged").mkdir()
  store = voting.VoteStore(epath.Path(tmp_path / "judged" / "votes.sqlite"))
  pairs = pairwise.make_pairs(pairwise.read_answers(a), pairwise.read_answers(b))
  for i, p in enumerate(pairs[:20]):
    store.add(p.id, "a" if i % 3 else "b", "a")
  store.close()
  result = subprocess.run([
      sys.executable, "-m", "flan_jax.judge", f"--judge={chat_checkpoint[0]}", f"--answers_a={a}",
      f"--answers_b={b}", f"--out={tmp_path / 'judged'}", "--resamples=100",
      f"--export_pairs={exported}"
  ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in exported.read_text().splitlines()]
  people = [r for r in rows if r["source"] == "people"]
  assert [r["chosen"] for r in people] == [p.a if i % 3 else p.b for i, p in enumerate(pairs[:20])]
  judgments = {
      j["pair"]: j["verdict"]
      for j in map(json.loads, open(tmp_path / "judged" / "judgments.jsonl"))
  }
  decided = [p for p in pairs[20:] if judgments[p.id] != "tie"]
  assert [r["prompt"] for r in rows if r["source"] == "model"] == [p.prompt for p in decided]
  assert f"{len(rows)} decided pairs of 40 written to {exported}" in result.stdout
  workdir = tmp_path / "dpo"
  result = subprocess.run([
      sys.executable, "-m", "flan_jax.train",
      f"--config=configs/dpo.py:checkpoint={chat_checkpoint[0]},"
      f"pairs={exported},held_out=2,lora=4", f"--workdir={workdir}", "--config.train.steps=2",
      "--config.data.seq_len=256", "--config.data.rows_per_shard=2", "--config.data.shards=2",
      "--config.loss.chunk_len=32"
  ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "eval" / "2" / "preference" / "results.json").exists()
  assert "reward accuracy" in result.stdout


def test_the_dpo_step_partitions_over_a_mesh_and_lowers_for_tpu():
  """On 8 devices (data 2 x fsdp 4) the step gives the one-device figures; lowered for TPU (Splash
  attention inside shard_map), it exports, with each of the three references."""
  config = _config()
  config.optim.update(dict(learning_rate=1e-2, warmup_steps=0))  # margins clear of rounding
  batch = _packed(_pairs(40), rows=config.data.batch_size)
  # The second step's figures: the first moved the policy off the reference.
  figures = [_steps(config, mesh, batch, 2)
             for mesh in (one_device_mesh(), sharding.make_mesh(dict(data=2, fsdp=4, tensor=1)))]
  for key in ("loss", "grad_norm", "rewards/margin", "rewards/accuracy"):
    assert figures[1][key] == pytest.approx(figures[0][key], rel=1e-4, abs=1e-6), key

  config.model.platform, config.model.dtype = "tpu", "bfloat16"
  mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
  rules = sharding.rules(config.sharding_rules)
  # LoRA's reference, and full fine-tuning's two (the frozen copy sharded like the weights).
  for lora_rank, reference in ((4, "auto"), (0, "precomputed"), (0, "frozen_copy")):
    config.model.lora_rank, config.loss.dpo_reference = lora_rank, reference
    with sharding.context(mesh, rules):
      jitted, args, static, facts = plan.programs(config, from_config(config.model), mesh,
                                                  rules)["train"]
      exported = jax.export.export(jitted, platforms=["tpu"])(*args, **static)
    assert facts["attention"] == "splash" and "tpu_custom_call" in exported.mlir_module()
    if reference == "frozen_copy":  # split over fsdp like the weights, not replicated
      assert all(x.sharding == y.sharding for x, y in zip(jax.tree.leaves(args[0].frozen),
                                                          jax.tree.leaves(args[0].params)))


def test_the_step_s_model_flops_count_a_reference_forward_pass_run_in_the_step():
  config = _config()
  dpo_flops = train.flops_per_token(config)
  config.loss.dpo_reference = "precomputed"  # its pass runs once, before training
  precomputed = train.flops_per_token(config)
  config.model.lora_rank, config.loss.dpo_reference = 0, "frozen_copy"
  assert train.flops_per_token(config) == pytest.approx(dpo_flops)
  config.loss.dpo_reference = "precomputed"
  config.loss.kind = "cross_entropy"
  assert precomputed == train.flops_per_token(config)
  assert dpo_flops == pytest.approx(4 / 3 * precomputed)
