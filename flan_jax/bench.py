r"""Speed, memory and efficiency, each figure a ratio taken inside one run.

  python -m flan_jax.bench [--json] [--write] [--only peak,train,loss,sharding,decode,packing,stall,...]
                           [--config configs/tiny.py]

The sections measure the configs given (defaults above; "the tiny config" below is --config):
this module imports no experiment config, and the model shapes come from flan_jax.presets.

peak      measured bf16 x bf16 -> f32 and f32 matmul throughput; the published peak where known (hardware.py).
train     train-step tokens/s for the tiny config and a d_model-512 one, one device, with bf16 and f32
          matmuls, and which model.dtype=auto picks. MFU = tokens/s x model.train_flops_per_token over
          the published peak (`mfu_<name>_vs_published_peak`, GPUs and TPUs) and over the measured peak
          of the dtype used (`mfu_<name>_vs_measured_<dtype>_peak`), where FLOPs per token = 6 x matmul
          parameters + 6 x layers x seq_len x heads x head_dim (MaxText's count).
peer      Hugging Face transformers + PyTorch training the d512 shape, f32 and bf16 autocast, in a process of
          its own; peer_train_ratio = our d512 tokens/s (model.dtype=auto) / the peer's faster dtype.
loss      fused versus naive cross-entropy at vocab 32,000, length 2,048, batch 8, d_model 512:
          compiled temporary memory and value-and-gradient time.
sharding  per-device parameter + optimiser memory on 8 simulated CPU devices (a process of its own), FSDP
          versus replicated.
decode    greedy decoding of 64 tokens with the KV cache versus recomputing the whole sequence per token.
packing   best-fit / first-fit / one-example-per-row efficiency, lognormal lengths (median 200, length 2,048)
          and flan_mini's lengths.
pipeline  tokens/s the tiny config's input pipeline produces, streaming and from prepared shards (prepared once into
          the tiny run's workdir), with 0, 1 and 2 workers (_workersN), over what its train step consumes, and
          the CPU milliseconds each spends per 1,000 tokens in-process.
stall     input_stall_fraction: the tiny config's train loop fed by its real pipeline over the same loop fed
          pre-built batches, minus 1 (the share of time the device waits for input); _prepared: fed from its
          prepared shards; _workersN: with N worker processes.
decontamination  training examples/s streamed past an 8-gram index of evaluation instances (T0 files).
data_scale  `python -m flan_jax.data prepare` of a generated SCALE_RECORDS-record mixture (data/scale_mixture.py)
          with 1 and 2 workers: seconds resolving it (decontamination and deduplication), prepared examples/s,
          peak RSS (the process's and its workers'), whether exactly the planted copies and exact repeats were
          dropped; then a run's start-up to its first batch on the prepared shards versus the streaming path
          (its first start, and a restart that finds the scan cached).
          Not in the default set (tens of minutes).
checkpoint  save and restore seconds per GB; the seconds an async save adds to the tiny config's training, and
          that over its training time between two saves (train.checkpoint_every steps).
lora      Llama-3.2-1B's trainable parameters and optimiser state (--config's): full fine-tuning versus LoRA rank 16.
attention train-step tokens/s and MFU of --attention_preset's shape with each attention implementation the
          platform runs (launch/gpu_check.sh on a GPU host).

The bench runs as the commands do (commands.start: glibc keeps freed host memory for reuse) on the
devices a training run has; figures that need simulated devices or a clean process come from
subprocesses. --write replaces this backend's section of BENCHMARKS.md with the results.
"""

import contextlib
import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import grain
from grain import experimental as grain_experimental
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from absl import app, flags
from etils import epath

from flan_jax import loss as losses
from flan_jax import checkpoint, commands, decode, hardware, lora, optim, presets, sharding, train, workdirs
from flan_jax.data import decontamination, packing, pipeline, prepared, render, scale_mixture, vocab
from flan_jax.model import Decoder, ModelConfig, from_config, matmul, train_flops_per_token


BENCHMARKS_HEADER = """# Benchmarks

Written by `python -m flan_jax.bench --write`, one section per backend and device.
Every figure is measured inside one run; ratios are ours / baseline as named. See
`flan_jax/bench.py` for what each section measures and how.
"""


def _seconds_per_call(fn, *args, repeats: int) -> float:
  """Median wall time of fn(*args) after one warm-up call (which also compiles)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def peak(results, config):
  """The best measured throughput over a few square matmuls, bf16 operands with f32 accumulation, and f32;
  and the device's published dense bf16 peak where hardware.CHIPS has it."""
  del results
  out = {f"measured_peak_{dtype}_tflops": hardware.measured_peak_flops(dtype, (1024, 2048, 4096)) / 1e12
         for dtype in ("bfloat16", "float32")}
  published = hardware.published_peak_flops(jax.devices()[0])
  if published:
    out["published_peak_tflops"] = published / 1e12
  return out


def synthetic_batch(rows: int, length: int, vocab: int, seed: int = 0):
  """Full packed rows of examples 20-120 tokens long (the last one in a row taking the rest where the
  row reaches packing.MAX_SEGMENTS), the second half of each example a response."""
  rng = np.random.default_rng(seed)
  batch = {key: np.zeros((rows, length), np.int32) for key in packing.BATCH_KEYS}
  batch["loss_weights"] = np.zeros((rows, length), np.float32)
  batch["inputs"] = rng.integers(1, vocab, (rows, length), dtype=np.int32)
  batch["targets"] = rng.integers(1, vocab, (rows, length), dtype=np.int32)
  for row in range(rows):
    start, segment = 0, 1
    while start < length:
      n = length - start
      if segment < packing.MAX_SEGMENTS:
        n = min(int(rng.integers(20, 120)), n)
      batch["segment_ids"][row, start:start + n] = segment
      batch["positions"][row, start:start + n] = np.arange(n)
      batch["loss_weights"][row, start + n // 2:start + n] = 1.0
      start, segment = start + n, segment + 1
  return batch


@contextlib.contextmanager
def one_device_train_step(config):
  """(the jitted train step, its initial state, a synthetic batch) for `config` on one device, to be
  called inside this context (the mesh's sharding rules)."""
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = sharding.rules(config.sharding_rules)
  model = from_config(config.model)
  optimizer, schedule = optim.make(config.optim, config.train.steps)
  batch = synthetic_batch(config.data.batch_size, config.data.seq_len, config.model.vocab_size)
  with sharding.context(mesh, rules):
    _, shardings = train.state_shapes(model, optimizer, mesh, rules)
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
    yield train.jit_train_step(model, optimizer, schedule, config, mesh, shardings), state, batch


def measure_train_step(config, repeats: int) -> dict:
  """Tokens/s of the jitted train step on one device, and the model FLOPs behind each token."""
  with one_device_train_step(config) as (step, state, batch):
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


def train_configs(config):
  """The --config as it trains (`tiny`), and the same data with the d_model-512 model."""
  tiny_config = copy.deepcopy(config)
  d512_config = copy.deepcopy(config)
  d512_config.model = presets.get("d512", vocab_size=config.data.tokenizer.vocab_size)
  d512_config.data.batch_size = 8
  return {"tiny": tiny_config, "d512": d512_config}


def train_steps(results, config):
  """Each shape trained with bf16 and with f32 matmul operands, and `train_tokens_per_s_<name>` the one
  model.dtype=auto picks on this device (`train_auto_over_best_dtype_<name>`: auto / the faster of the
  two). MFU against the published peak where the device has one, and against the measured matmul
  peak of the dtype auto uses."""
  if "measured_peak_float32_tflops" not in results:
    results.update(peak(results, config))
  auto = hardware.compute_dtype("auto")
  out = {"train_dtype_auto": auto}
  for name, shape_config in train_configs(config).items():
    for dtype in ("float32", "bfloat16"):
      shape_config.model.dtype = dtype
      measured = measure_train_step(shape_config, repeats=5 if name == "tiny" else 3)
      out[f"train_tokens_per_s_{name}_{dtype}"] = measured["tokens_per_s"]
      out[f"train_step_s_{name}_{dtype}"] = measured["step_s"]
    rate = out[f"train_tokens_per_s_{name}"] = out[f"train_tokens_per_s_{name}_{auto}"]
    out[f"train_auto_over_best_dtype_{name}"] = rate / max(out[f"train_tokens_per_s_{name}_{d}"]
                                                           for d in ("float32", "bfloat16"))
    model_flops = rate * measured["flops_per_token"]
    if "published_peak_tflops" in results:
      out[f"mfu_{name}_vs_published_peak"] = model_flops / (results["published_peak_tflops"] * 1e12)
    out[f"mfu_{name}_vs_measured_{auto}_peak"] = model_flops / (results[f"measured_peak_{auto}_tflops"] * 1e12)
  return out


def peer_training(results, config):
  """Hugging Face transformers + PyTorch training the d512 shape (see peer_model), in a process of its own
  with glibc's default malloc, as it runs without flan_jax (commands.keep_freed_host_memory, which this
  process runs under, slows its bf16 steps by a third); `peer_train_ratio` is our d512 tokens/s with
  model.dtype=auto over the faster of the peer's two dtypes."""
  out = _section_in_subprocess("peer_model", flags.FLAGS["config"].config_filename, GLIBC_TUNABLES="")
  ours = results.get("train_tokens_per_s_d512")
  if ours is None:
    config = train_configs(config)["d512"]
    config.model.dtype = "auto"
    ours = measure_train_step(config, repeats=3)["tokens_per_s"]
  out["peer_train_ratio"] = ours / max(out[f"peer_train_tokens_per_s_d512_{d}"] for d in ("float32", "bfloat16"))
  return out


def peer_model(results, config):
  """The peer: the d512 shape (same layers, heads, MLP, tied vocabulary, sequence length and batch;
  AdamW) as a transformers Llama in its own code with SDPA attention over plain causal rows (it has no
  packed-row masking), trained on the same device in f32 and in bf16 autocast."""
  del results
  import torch  # only this section needs PyTorch (installed for the parity tests)
  import transformers
  config = train_configs(config)["d512"]
  cfg = ModelConfig(**config.model)
  hf_config = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
      tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=config.data.seq_len,
      attn_implementation="sdpa")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf_config).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.learning_rate)
  tokens = torch.from_numpy(synthetic_batch(config.data.batch_size, config.data.seq_len, cfg.vocab_size)["inputs"]).long()

  def step(dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  out = {}
  for dtype in ("float32", "bfloat16"):
    step(dtype)  # warm-up
    times = []
    for _ in range(3):
      start = time.perf_counter()
      step(dtype)
      times.append(time.perf_counter() - start)
    out[f"peer_train_tokens_per_s_d512_{dtype}"] = tokens.numel() / float(np.median(times))
  out["peer_torch_threads"] = torch.get_num_threads()
  return out


def fused_loss(results, config):
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


def fsdp_memory(results, config):
  """fsdp_memory_on_8_devices in a process with 8 simulated CPU devices (this one keeps the device
  count training has, which the train figures need: simulated devices share the host's cores)."""
  del results, config
  return _section_in_subprocess("fsdp_memory_on_8_devices", flags.FLAGS["config"].config_filename,
                                XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")


def fsdp_memory_on_8_devices(results, config):
  """Bytes of parameters and AdamW state on the first of 8 CPU devices: d512 model, FSDP versus replicated."""
  del results
  config = train_configs(config)["d512"]
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


def kv_cache_decoding(results, config):
  """Greedy decoding of 64 new tokens after 128-token prompts, batch 8, d512 model: with the KV cache
  (decode.py) versus recomputing the full forward pass over the [8, 192] buffer for every token."""
  del results
  config = train_configs(config)["d512"]
  model = from_config(config.model)
  batch, prompt_len, new = 8, 128, 64
  params = jax.jit(model.init)(jax.random.key(0), *[jnp.zeros((1, 8), jnp.int32)] * 3)["params"]
  prompts = np.random.default_rng(0).integers(3, config.model.vocab_size, (batch, prompt_len)).tolist()
  cached = lambda: decode.generate(params, model, prompts, max_new_tokens=new, stop_ids=(), pad_id=0)

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


def _packed_efficiency(lengths, seq_len: int, packer: str, rows: int) -> float:
  """Non-padding fraction of `rows` packed rows built from examples of the given lengths."""
  features = [{"inputs": np.ones(n, np.int32), "targets": np.ones(n, np.int32), "loss_weights": np.ones(n, np.int32)}
              for n in lengths]
  packed = iter(packing.pack(grain.MapDataset.source(features).to_iter_dataset(), seq_len, packer=packer,
                             num_bins=64, seed=0))
  return float(np.mean([packing.efficiency(next(packed)["segment_ids"]) for _ in range(rows)]))


def packing_efficiency(results, config):
  """Best fit, first fit and one example per row: on lognormal lengths like real instruction data
  (median 200 tokens, sequence length 2,048) and on flan_mini's own lengths (tiny config)."""
  del results
  out = {}
  lognormal = np.clip(np.random.default_rng(0).lognormal(np.log(200), 0.9, 40_000).astype(int), 8, 2048)
  data = config.data
  mix = pipeline.resolve_mixture(data)
  tokenizer = _tokenizer(config)
  examples = pipeline.examples(data, mix, tokenizer, render.Stats(), seed=0)
  flan_mini = [len(examples[i]["inputs"]) for i in range(8000)]
  for name, lengths, seq_len, rows in (("", lognormal, 2048, 500), ("flan_mini_", flan_mini, data.seq_len, 500)):
    for packer in ("best_fit", "first_fit"):
      out[f"{name}packing_efficiency_{packer}"] = _packed_efficiency(lengths, seq_len, packer, rows)
    out[f"{name}packing_efficiency_naive"] = float(np.mean(np.minimum(lengths, seq_len)) / seq_len)
  return out


def _tokenizer(config):
  """The --config's tokenizer, cached where `python -m flan_jax.train --config <the same file>` keeps it."""
  workdir = workdirs.default(flags.FLAGS["config"].config_filename)
  return vocab.get_tokenizer(config.data, workdirs.tokenizer_dir(workdir))


def input_pipeline(results, config):
  """Tokens/s the tiny config's input pipeline produces on one process, streaming (rendering and
  tokenizing as it goes) and from prepared shards (`python -m flan_jax.data prepare` first: reading
  and packing only), with 0, 1 and 2 worker processes (data.num_workers), over what its train step
  consumes; and, in-process, its CPU milliseconds per 1,000 tokens, so that a host's need is its
  chips' tokens/s x that / 10^6 cores."""
  tokenizer = _tokenizer(config)
  directory, manifest = _prepared(config)
  consumed = results.get("train_tokens_per_s_tiny") or measure_train_step(config, repeats=3)["tokens_per_s"]
  figures = {}
  for workers in (0, 1, 2):
    data = _with_workers(config.data, workers)
    for name in ("", "_prepared"):
      stats = render.Stats()
      stream = (prepared.examples(directory, manifest, stats) if name else
                pipeline.examples(data, pipeline.resolve_mixture(data), tokenizer, stats, seed=config.seed))
      batches = iter(pipeline.pack_batches(data, stream, stats, seed=config.seed))
      next(batches)  # opens the sources (and starts the workers)
      start, cpu, count = time.perf_counter(), time.process_time(), 2 * pipeline.packing_cycle(data)
      for _ in range(count):
        next(batches)
      tokens = count * data.batch_size * data.seq_len
      produced = tokens / (time.perf_counter() - start)
      name += f"_workers{workers}" if workers else ""
      figures.update({f"pipeline{name}_tokens_per_s": produced,
                      f"pipeline{name}_to_train_ratio": produced / consumed})
      if not workers:  # a worker's CPU time is not this process's
        figures[f"pipeline{name}_cpu_ms_per_1k_tokens"] = (time.process_time() - cpu) / tokens * 1e6
      batches.close()
  return figures


def _with_workers(data_cfg, workers: int):
  data_cfg = copy.deepcopy(data_cfg)
  data_cfg.num_workers = workers
  return data_cfg


def _prepared(config) -> tuple[str, dict]:
  """(directory, manifest) of the --config's data prepared beside its tokenizer (`prepare` keeps the
  shards already written, so only the first bench run prepares)."""
  workdir = workdirs.default(flags.FLAGS["config"].config_filename)
  directory = os.path.join(workdir, "prepared")
  os.makedirs(prepared.tokenizer_dir(directory), exist_ok=True)
  tokenizer = _tokenizer(config)
  cached = epath.Path(prepared.tokenizer_dir(directory)) / os.path.basename(tokenizer.path)
  if not cached.exists():
    epath.Path(tokenizer.path).copy(cached)  # the same tokenizer, not trained again
  if not os.path.exists(os.path.join(directory, prepared.MANIFEST)):
    prepared.prepare(config, directory, num_workers=os.cpu_count(), log=lambda _: None)
  return directory, prepared.read_manifest(directory)


def input_stall(results, config):
  """The share of the tiny config's train-loop time spent waiting for input, one process on one device:
  (steps fed by the real pipeline, read ahead in its thread or its workers) / (steps fed with batches
  built before) - 1, streaming and from the tiny data's prepared shards (`_prepared`), with 0, 1 and 2
  workers. All go through train.device_batches, as the train loop does, for packing cycles of steps
  (32 on the tiny config; each holds the pipeline's one burst of work per cycle), three each,
  alternated, since a 2-core machine's speed drifts by tens of percent from one half minute to the
  next."""
  del results
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = sharding.rules(config.sharding_rules)
  model = from_config(config.model)
  optimizer, schedule = optim.make(config.optim, config.train.steps)
  mix, tokenizer = pipeline.resolve_mixture(config.data), _tokenizer(config)
  directory, manifest = _prepared(config)
  pipelines = {}
  for workers in (0, 1, 2):
    data, stats = _with_workers(config.data, workers), render.Stats()
    suffix = f"_workers{workers}" if workers else ""
    pipelines["real" + suffix] = iter(pipeline.batches(data, mix, tokenizer, stats, seed=0))
    pipelines["prepared" + suffix] = iter(
        pipeline.pack_batches(data, prepared.examples(directory, manifest, stats), stats, seed=0))
  prebuilt = iter(grain.MapDataset.source([next(pipelines["real"]) for _ in range(10)]).repeat().to_iter_dataset())
  with sharding.context(mesh, rules):
    _, shardings = train.state_shapes(model, optimizer, mesh, rules)
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
    step = train.jit_train_step(model, optimizer, schedule, config, mesh, shardings)
    feeds = {name: train.device_batches(it, mesh) for name, it in {"prebuilt": prebuilt, **pipelines}.items()}
    state, _ = step(state, next(feeds["prebuilt"])[0])  # compile
    seconds, steps = dict.fromkeys(feeds, 0.0), pipeline.packing_cycle(config.data)  # the pipeline's cost, whole
    cycles = 3
    for name in tuple(feeds) * cycles:
      batch, _ = next(feeds[name])
      jax.block_until_ready(state)
      start = time.perf_counter()
      for _ in range(steps):  # as train.train_loop: the next batch is fetched while the step runs
        state, _ = step(state, batch)
        batch, _ = next(feeds[name])
      jax.block_until_ready(state)
      seconds[name] += time.perf_counter() - start
  for it in pipelines.values():
    it.close()
  figures = {f"input_stall_step_s_{name}": s / (cycles * steps) for name, s in seconds.items()}
  for name in pipelines:  # real -> input_stall_fraction, prepared_workers1 -> ..._prepared_workers1
    key = "input_stall_fraction" + ("_" + name).removeprefix("_real")
    figures[key] = seconds[name] / seconds["prebuilt"] - 1
  return figures


T0_DIR = "../shared/real/t0_train"  # the T0 training files beside the checkout (configs/t0.py's data=)


def decontamination_speed(results, config):
  """Training examples/s streamed past a decontamination index (8-grams, threshold 0.5), on the T0
  training files' prompts: every tenth file's first 200 rows stand in for evaluation sets, and
  the other files' rows stream past them."""
  del results
  files = sorted(epath.Path(T0_DIR).glob("*.jsonl"))
  if not files:
    raise FileNotFoundError(f"{T0_DIR}: no T0 training files (*.jsonl); the decontamination figure reads them")
  rows = {f.stem: [json.loads(line)["prompt"] for line in f.read_text().splitlines() if line.strip()] for f in files}
  evaluation = {name: prompts[:200] for k, (name, prompts) in enumerate(rows.items()) if k % 10 == 0}
  start = time.perf_counter()
  index = decontamination.Index(ngram=8, threshold=0.5)
  for name, prompts in evaluation.items():
    for i, prompt in enumerate(prompts):
      index.add(f"{name}/{i}", prompt)
  built = time.perf_counter() - start
  training = [(name, i, prompt) for name, prompts in rows.items() if name not in evaluation
              for i, prompt in enumerate(prompts)]
  start = time.perf_counter()
  flagged = decontamination.scan(index, training)
  seconds = time.perf_counter() - start
  return {"decontamination_examples_per_s": len(training) / seconds, "decontamination_index_instances": len(index),
          "decontamination_index_s": built, "decontamination_training_examples": len(training),
          "decontamination_flagged_examples": sum(len(v) for v in flagged.values())}


def checkpoints(results, config):
  """Save and restore speed of the d512 train state (AdamW), and what an asynchronous save costs the
  tiny config's training: `async_checkpoint_extra_s`, the seconds 5 steps right after starting a save
  (the save call included) take beyond 5 steps without, the mean of 5 such pairs; and
  `async_checkpoint_overhead`, that over the time the config trains between two saves
  (train.checkpoint_every steps). The save's threads take cores the step's thread pool is using, so
  a save costs more than its own time (~0.15 s alone for the tiny state on 2 cores)."""
  del results
  out = {}
  for name, config in train_configs(config).items():  # noqa: B020 (each shape's config in turn)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    rules = sharding.rules(config.sharding_rules)
    model = from_config(config.model)
    optimizer, schedule = optim.make(config.optim, config.train.steps)
    data = iter(grain_experimental.ZipIterDataset([grain.MapDataset.range(10).to_iter_dataset()]))  # one shard
    with tempfile.TemporaryDirectory() as workdir, sharding.context(mesh, rules):
      shapes, shardings = train.state_shapes(model, optimizer, mesh, rules)
      state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
      manager = checkpoint.manager(workdir, keep=3)
      if name == "d512":
        gigabytes = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e9
        start = time.perf_counter()
        checkpoint.save(manager, 1, state, data.get_state(), data_shards=1)
        manager.wait_until_finished()
        out["checkpoint_save_s_per_gb"] = (time.perf_counter() - start) / gigabytes
        start = time.perf_counter()
        one_shard = ml_collections.ConfigDict(dict(shards=1, num_workers=0))
        jax.block_until_ready(checkpoint.restore_latest(manager, checkpoint.abstract(shapes, shardings), data,
                                                        one_shard))
        out["checkpoint_restore_s_per_gb"] = (time.perf_counter() - start) / gigabytes
        continue
      step = train.jit_train_step(model, optimizer, schedule, config, mesh, shardings)
      batch = synthetic_batch(config.data.batch_size, config.data.seq_len, config.model.vocab_size)

      window = 5  # steps timed after starting a save, and without one

      def steps(state, count=window):
        for _ in range(count):
          state, metrics = step(state, batch)
          jax.block_until_ready(metrics)
        return state

      state = steps(state, 2)  # compile
      timings = []
      for with_save in (False, True) * 5:
        start = time.perf_counter()
        if with_save:
          checkpoint.save(manager, int(state.step), state, data.get_state(), data_shards=1)
        state = steps(state)
        timings.append((with_save, time.perf_counter() - start))
        manager.wait_until_finished()
      plain = np.mean([t for saved, t in timings if not saved])
      extra = out["async_checkpoint_extra_s"] = float(np.mean([t for saved, t in timings if saved]) - plain)
      out["async_checkpoint_overhead"] = extra / (plain / window * config.train.checkpoint_every)
  return out


def _section_in_subprocess(section: str, config_file: str, **env) -> dict:
  """The figures of `python -m flan_jax.bench --only=<section> --config=<config_file>` run with `env` added."""
  command = [sys.executable, "-m", "flan_jax.bench", "--json", f"--only={section}", f"--config={config_file}"]
  result = subprocess.run(command, env=dict(os.environ, **env), capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} (with {env}) failed:\n{result.stderr[-3000:]}")
  figures = json.loads(result.stdout)
  return {k: v for k, v in figures.items() if k not in ("backend", "device")}


def attention_implementations(results, config):
  """The train step of --attention_preset (default Llama-3.2-1B's shape; 2 rows of 2,048 tokens, full
  remat, bf16) on one device with each attention implementation this platform runs: einsum, chunked
  and xla everywhere, cudnn on GPUs, splash on TPUs. Tokens/s and MFU against the published peak (the
  measured bf16 peak where there is none); an implementation that fails is reported with its error.
  What launch/gpu_check.sh runs on a GPU host."""
  if "measured_peak_bfloat16_tflops" not in results:
    results.update(peak(results, config))
  shape_config = copy.deepcopy(config)
  shape_config.model = presets.get(flags.FLAGS.attention_preset, vocab_size=config.data.tokenizer.vocab_size)
  shape_config.model.update(dtype="bfloat16", remat="full")
  shape_config.data.batch_size, shape_config.data.seq_len = 2, 2048
  platform = jax.devices()[0].platform
  kernels = {"gpu": ("cudnn",), "tpu": ("splash",)}.get(platform, ())
  peak_flops = results.get("published_peak_tflops", results["measured_peak_bfloat16_tflops"]) * 1e12
  out = {"attention_preset": flags.FLAGS.attention_preset,
         "attention_mfu_peak": "published" if "published_peak_tflops" in results else "measured bf16"}
  for implementation in ("einsum", "chunked", "xla") + kernels:
    shape_config.model.attention = implementation
    try:
      measured = measure_train_step(shape_config, repeats=3)
    except Exception as error:  # a kernel this device cannot serve: its error is the figure
      out[f"attention_{implementation}_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
      continue
    out[f"attention_{implementation}_tokens_per_s"] = measured["tokens_per_s"]
    out[f"attention_{implementation}_mfu"] = measured["tokens_per_s"] * measured["flops_per_token"] / peak_flops
  return out


def lora_memory(results, config):
  """Trainable parameters and optimiser state (the --config's optimiser; AdamW for configs/tiny.py) of
  Llama-3.2-1B: full fine-tuning vs LoRA of rank 16 on the attention projections (shapes only, nothing
  allocated)."""
  del results
  out = {}
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = sharding.rules("fsdp")
  optimizer, _ = optim.make(config.optim, config.train.steps)
  for name, rank in (("full", 0), ("lora16", 16)):
    model_config = presets.get("llama3_2_1b")
    model_config.lora_rank = rank
    with sharding.context(mesh, rules):
      shapes, _ = train.state_shapes(from_config(model_config), optimizer, mesh, rules)
    out[f"llama3_2_1b_{name}_trainable_params"] = lora.count(shapes.params)
    out[f"llama3_2_1b_{name}_optimizer_bytes"] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes.opt_state))
  out["lora16_over_full_optimizer_memory"] = (out["llama3_2_1b_lora16_optimizer_bytes"]
                                              / out["llama3_2_1b_full_optimizer_bytes"])
  return out


SCALE_RECORDS = 2_000_000


def data_scale(results, config):
  """See the module docstring (data_scale). The mixture and preparations go to a temporary directory."""
  del results
  figures = {}
  with tempfile.TemporaryDirectory() as directory:
    mixture = scale_mixture.write(directory, SCALE_RECORDS)
    specs = {name: os.path.join(directory, f"{name}.json") for name in ("task", "evaluation")}
    for name, path in specs.items():
      with open(path, "w") as f:
        json.dump([mixture[name]], f)
    overrides = ["--config.data.mixture=()", "--config.data.held_out_clusters=()",
                 "--config.data.deduplication.mode=exact", f"--config.data.local_tasks={specs['task']}",
                 f"--config.data.decontamination.evaluation_files={specs['evaluation']}"]
    for workers in (1, 2):
      out = os.path.join(directory, f"prepared_{workers}")
      start = time.perf_counter()
      subprocess.run([sys.executable, "-m", "flan_jax.data", "prepare", f"--out={out}", f"--num_workers={workers}",
                      f"--config={flags.FLAGS['config'].config_filename}", *overrides], check=True,
                     stdout=subprocess.DEVNULL)
      seconds = time.perf_counter() - start
      manifest = prepared.read_manifest(out)
      figures[f"data_scale_{workers}_workers_s"] = seconds
      figures[f"data_scale_{workers}_workers_scan_s"] = manifest["scan_seconds"]
      figures[f"data_scale_{workers}_workers_examples_per_s"] = manifest["examples"] / manifest["render_seconds"]
      figures[f"data_scale_{workers}_workers_peak_rss_gb"] = manifest["peak_rss_gb"]
    truth = mixture["truth"]
    contamination, duplicates = manifest["mixture"]["contamination"], manifest["mixture"]["duplicates"]
    figures.update({
        "data_scale_records": SCALE_RECORDS, "data_scale_prepared_examples": manifest["examples"],
        "data_scale_planted": sum(len(t["planted"]) for t in truth.values()),
        "data_scale_flagged": sum(t["flagged"] for t in contamination["training_tasks"].values()),
        "data_scale_exact_repeats": sum(len(t["exact"]) for t in truth.values()),
        "data_scale_duplicates_dropped": sum(t["dropped"] for t in duplicates.values()),
        "data_scale_drops_match_per_task": all(
            contamination["training_tasks"].get(name, {}).get("flagged", 0) == len(t["planted"])
            and duplicates.get(name, {}).get("dropped", 0) == len(t["exact"]) for name, t in truth.items())})
    config = copy.deepcopy(config)
    scale_mixture.configure(config, mixture)
    tokenizer = vocab.get_tokenizer(config.data, prepared.tokenizer_dir(out))
    # The streaming path's first start scans (and caches the scan in the workdir); a restart reads it.
    for path in ("prepared", "streaming", "streaming_restart"):
      config.data.prepared = out if path == "prepared" else ""
      start = time.perf_counter()
      stats = render.Stats()
      stream = train.example_stream(config, directory, tokenizer, stats)
      batches = iter(pipeline.pack_batches(config.data, stream, stats, seed=config.seed))
      next(batches)
      figures[f"data_scale_start_up_s_{path}"] = time.perf_counter() - start
      batches.close()
  return figures


SECTIONS = {"peak": peak, "train": train_steps, "peer": peer_training, "loss": fused_loss, "sharding": fsdp_memory,
            "decode": kv_cache_decoding, "packing": packing_efficiency, "pipeline": input_pipeline, "stall": input_stall,
            "decontamination": decontamination_speed,
            "checkpoint": checkpoints, "lora": lora_memory, "attention": attention_implementations}
# Run by the sections above in processes of their own: `sharding` (8 simulated devices), `peer`.
INTERNAL_SECTIONS = {"fsdp_memory_on_8_devices": fsdp_memory_on_8_devices,
                     "peer_model": peer_model, "data_scale": data_scale}  # the last: too long for the default


def _format(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def main(argv):
  commands.start(argv)
  names = flags.FLAGS.only or list(SECTIONS)
  sections = {**SECTIONS, **INTERNAL_SECTIONS}
  unknown = sorted(set(names) - set(sections))
  if unknown:
    raise app.UsageError(f"--only: unknown sections {unknown}; choose from {', '.join(SECTIONS)}, data_scale")
  device = jax.devices()[0]
  results = {"backend": jax.default_backend(), "device": hardware.device_name(device)}
  for name in names:
    start = time.perf_counter()
    results.update(sections[name](results, flags.FLAGS.config))
    print(f"[bench] {name}: {time.perf_counter() - start:.0f}s", file=sys.stderr)
  if flags.FLAGS.json:
    json.dump(results, sys.stdout, indent=1)
    print()
  else:
    width = max(map(len, results))
    for key, value in results.items():
      print(f"{key:<{width}}  {_format(value)}")
  if flags.FLAGS.write:
    write_benchmarks(results, "BENCHMARKS.md", names)


def write_benchmarks(results: dict, path: str, sections):
  """Replaces (or adds) the section of `path` for this backend and device."""
  heading = f"## {results['backend']}: {results['device']}"
  lines = [heading, "", f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} host CPU cores, "
           f"`python -m flan_jax.bench --only {','.join(sections)}`.", "",
           "| figure | value |", "|---|---|"]
  lines += [f"| `{k}` | {_format(v)} |" for k, v in results.items() if k not in ("backend", "device")]
  text = open(path).read() if os.path.exists(path) else BENCHMARKS_HEADER
  sections = text.split("\n## ")
  kept = [sections[0].rstrip("\n")] + ["## " + s.rstrip("\n") for s in sections[1:]
                                       if not ("## " + s).startswith(heading + "\n")]
  with open(path, "w") as f:
    f.write("\n\n".join(kept + ["\n".join(lines)]) + "\n")


if __name__ == "__main__":
  # Defined here, not at import, so that tests can import this module beside other commands.
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/tiny.py", "The config whose data, tokenizer, optimiser and "
                                  "tiny model the CPU-scale sections measure (the d512 shape swaps in its model).")
  flags.DEFINE_string("attention_preset", "llama3_2_1b", "The model shape the `attention` section trains.")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
  flags.DEFINE_list("only", None, "Sections to run (default: all).")
  flags.DEFINE_bool("write", False, "Rewrite this backend's section of BENCHMARKS.md with the results.")
  app.run(main)
