r"""Speed, memory and efficiency, each figure a ratio taken inside one run.

  python -m flan_jax.bench [--json] [--only peak,train,loss,sharding,decode]

peak      bf16 x bf16 -> f32 and f32 matmul throughput: the denominator of MFU.
train     train-step tokens/s and MFU for the tiny config and a d_model-512 one, one device.
          MFU = tokens/s x model.train_flops_per_token / peak bf16 FLOP/s, where FLOPs per token
          = 6 x matmul parameters + 6 x layers x seq_len x heads x head_dim (MaxText's count).
loss      fused versus naive cross-entropy at vocab 32,000, length 2,048, batch 8, d_model 512:
          compiled temporary memory and value-and-gradient time.
sharding  per-device parameter + optimiser memory on 8 simulated CPU devices, FSDP versus replicated.
decode    greedy decoding of 64 tokens with the KV cache versus recomputing the whole sequence per token.
"""

import os

# Eight simulated host devices for the sharding figures; set before jax starts. On GPU or TPU
# hosts this adds CPU devices only, and the accelerator stays the default backend.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import models, tiny  # noqa: E402
from flan_jax import loss as losses  # noqa: E402
from flan_jax import decode, metric_writer, optim, sharding, train  # noqa: E402
from flan_jax.data import packing  # noqa: E402
from flan_jax.model import Decoder, ModelConfig, from_config, matmul, train_flops_per_token  # noqa: E402

_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_ONLY = flags.DEFINE_list("only", None, "Sections to run (default: all).")


def _seconds_per_call(fn, *args, repeats: int) -> float:
  """Median wall time of fn(*args) after one warm-up call (which also compiles)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def peak(results):
  """Best throughput over a few square matmuls, bf16 operands with f32 accumulation, and f32."""
  del results
  best = lambda dtype: max(metric_writer.matmul_peak_flops(dtype, n) for n in (1024, 2048, 4096)) / 1e12
  return {"peak_bf16_tflops": best(jnp.bfloat16), "peak_f32_tflops": best(jnp.float32)}


def synthetic_batch(rows: int, length: int, vocab: int, seed: int = 0):
  """Full packed rows of examples 20-120 tokens long, the second half of each example a response."""
  rng = np.random.default_rng(seed)
  batch = {key: np.zeros((rows, length), np.int32) for key in packing.BATCH_KEYS}
  batch["loss_weights"] = np.zeros((rows, length), np.float32)
  batch["inputs"] = rng.integers(1, vocab, (rows, length), dtype=np.int32)
  batch["targets"] = rng.integers(1, vocab, (rows, length), dtype=np.int32)
  for row in range(rows):
    start, segment = 0, 1
    while start < length:
      n = min(int(rng.integers(20, 120)), length - start)
      batch["segment_ids"][row, start:start + n] = segment
      batch["positions"][row, start:start + n] = np.arange(n)
      batch["loss_weights"][row, start + n // 2:start + n] = 1.0
      start, segment = start + n, segment + 1
  return batch


def measure_train_step(config, repeats: int) -> dict:
  """Tokens/s of the jitted train step on one device, and the model FLOPs behind each token."""
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = sharding.rules(config.sharding_rules)
  model = from_config(config.model)
  optimizer, schedule = optim.make(config.optim, config.train.steps)
  batch = synthetic_batch(config.data.batch_size, config.data.seq_len, config.model.vocab_size)
  with sharding.context(mesh, rules):
    _, shardings = train.state_shapes(model, optimizer, mesh, rules)
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
    step = train.jit_train_step(model, optimizer, schedule, config, mesh, shardings)
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  tokens = config.data.batch_size * config.data.seq_len
  seconds = float(np.median(times))
  return {"tokens_per_s": tokens / seconds, "step_s": seconds,
          "flops_per_token": train_flops_per_token(ModelConfig(**config.model), config.data.seq_len)}


def train_configs():
  """The tiny config as it trains, and the same data with the d_model-512 model."""
  tiny_config = tiny.get_config()
  d512_config = tiny.get_config()
  d512_config.model = models.get("d512", vocab_size=tiny_config.data.tokenizer.vocab_size)
  d512_config.data.batch_size = 8
  return {"tiny": tiny_config, "d512": d512_config}


def train_steps(results):
  if "peak_bf16_tflops" not in results:
    results.update(peak(results))
  out = {}
  for name, config in train_configs().items():
    measured = measure_train_step(config, repeats=5 if name == "tiny" else 3)
    out[f"train_tokens_per_s_{name}"] = measured["tokens_per_s"]
    out[f"train_step_s_{name}"] = measured["step_s"]
    out[f"mfu_{name}"] = measured["tokens_per_s"] * measured["flops_per_token"] / (results["peak_bf16_tflops"] * 1e12)
  return out


def fused_loss(results):
  del results
  batch, length, d, vocab = 8, 2048, 512, 32_000
  keys = jax.random.split(jax.random.key(0), 3)
  hidden = jax.random.normal(keys[0], (batch, length, d))
  unembedding = jax.random.normal(keys[1], (d, vocab)) * d ** -0.5
  targets = jax.random.randint(keys[2], (batch, length), 0, vocab)
  weights = jnp.full((batch, length), 1.0 / (batch * length))
  variants = {"fused": functools.partial(losses.fused_cross_entropy, chunk_len=128, dtype="bfloat16"),
              "naive": functools.partial(losses.naive_cross_entropy, dtype="bfloat16")}
  temp, seconds = {}, {}
  for name, fn in variants.items():
    grad = jax.jit(jax.value_and_grad(lambda h, u, fn=fn: fn(h, u, targets, weights)[0], argnums=(0, 1)))
    temp[name] = grad.lower(hidden, unembedding).compile().memory_analysis().temp_size_in_bytes
    seconds[name] = _seconds_per_call(grad, hidden, unembedding, repeats=3)
  return {"fused_loss_temp_bytes": temp["fused"], "naive_loss_temp_bytes": temp["naive"],
          "fused_loss_step_s": seconds["fused"], "naive_loss_step_s": seconds["naive"],
          "fused_loss_temp_memory_ratio": temp["fused"] / temp["naive"],
          "fused_loss_step_time_ratio": seconds["fused"] / seconds["naive"]}


def fsdp_memory(results):
  """Bytes of parameters and AdamW state on the first of 8 CPU devices: d512 model, FSDP versus replicated."""
  del results
  config = train_configs()["d512"]
  devices = jax.devices("cpu")[:8]
  model = from_config(config.model)
  optimizer, _ = optim.make(config.optim, config.train.steps)
  per_device = {}
  for rules_name, mesh_shape in (("dp", dict(data=8, fsdp=1, tensor=1)), ("fsdp", dict(data=1, fsdp=8, tensor=1))):
    mesh = sharding.make_mesh(mesh_shape, devices)
    rules = sharding.rules(rules_name)
    with sharding.context(mesh, rules):
      _, shardings = train.state_shapes(model, optimizer, mesh, rules)
      state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
    per_device[rules_name] = sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(state))
  return {"replicated_state_bytes_per_device": per_device["dp"], "fsdp_state_bytes_per_device": per_device["fsdp"],
          "fsdp_memory_ratio": per_device["fsdp"] / (per_device["dp"] / 8)}


def kv_cache_decoding(results):
  """Greedy decoding of 64 new tokens after 128-token prompts, batch 8, d512 model: with the KV cache
  (decode.py) versus recomputing the full forward pass over the [8, 192] buffer for every token."""
  del results
  config = train_configs()["d512"]
  model = from_config(config.model)
  batch, prompt_len, new = 8, 128, 64
  params = jax.jit(model.init)(jax.random.key(0), *[jnp.zeros((1, 8), jnp.int32)] * 3)["params"]
  prompts = np.random.default_rng(0).integers(3, config.model.vocab_size, (batch, prompt_len)).tolist()
  cached = lambda: decode.generate(params, model, prompts, max_new_tokens=new, eos_id=-1, pad_id=0)

  @jax.jit
  def recompute(params, tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    unembedding = model.apply({"params": params}, method=Decoder.unembedding)

    def step(t, tokens):
      hidden = model.apply({"params": params}, tokens, positions, jnp.ones_like(tokens))
      logits = matmul("bd,dv->bv", hidden[:, prompt_len + t - 1], unembedding, model.cfg.dtype)
      return tokens.at[:, prompt_len + t].set(jnp.argmax(logits, axis=-1).astype(jnp.int32))
    return jax.lax.fori_loop(0, new, step, tokens)

  buffer = jnp.asarray(np.pad(np.asarray(prompts, np.int32), ((0, 0), (0, new))))
  with_cache = _seconds_per_call(cached, repeats=3)
  without = _seconds_per_call(recompute, params, buffer, repeats=3)
  same = np.array_equal(np.stack(cached()), np.asarray(recompute(params, buffer))[:, prompt_len:])
  return {"kv_cache_decode_tokens_per_s": batch * new / with_cache, "recompute_decode_tokens_per_s": batch * new / without,
          "kv_cache_decode_speedup": without / with_cache, "kv_cache_matches_recompute": bool(same)}


SECTIONS = {"peak": peak, "train": train_steps, "loss": fused_loss, "sharding": fsdp_memory,
            "decode": kv_cache_decoding}


def _format(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  names = _ONLY.value or list(SECTIONS)
  unknown = sorted(set(names) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f"--only: unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
  device = jax.devices()[0]
  results = {"backend": jax.default_backend(), "device": device.device_kind}
  for name in names:
    start = time.perf_counter()
    results.update(SECTIONS[name](results))
    print(f"[bench] {name}: {time.perf_counter() - start:.0f}s", file=sys.stderr)
  if _JSON.value:
    json.dump(results, sys.stdout, indent=1)
    print()
  else:
    width = max(map(len, results))
    for key, value in results.items():
      print(f"{key:<{width}}  {_format(value)}")


if __name__ == "__main__":
  app.run(main)
