r"""Plans a run on TPUs before anyone books them: compiles (never runs) a config's programs for a
Cloud TPU topology and reports, per chip, what they need and what they would do.

  python -m flan_jax.plan --config configs/flan2021.py:model=llama3_8b --topology v5p-64 \
      [--num_slices 2] [--json]

Any host with libtpu installed compiles for any topology (jax.experimental.topologies; no TPU is
touched and no checkpoint or data is read: shapes only). Three programs are compiled on the
config's mesh over the topology's chips: the train step, evaluation's scoring (the evaluators'
largest batch_size of rows of data.seq_len tokens) and one decoding step over a KV cache of data.seq_len slots. Each
reports:

  memory per chip (arguments, temporaries, outputs) against the chip's HBM, and for training the
    most rows per data x fsdp shard that fit (temporaries taken as proportional to the rows);
  FLOPs per step and chip counted over every loop iteration (hlo_cost.py; Splash's by the model's
    attention formula, since XLA cannot see inside a Pallas kernel), beside the model's own count
    and XLA's cost_analysis() (which counts a loop body once);
  a roofline step time: the largest of FLOPs over the chip's peak, HBM bytes over its bandwidth,
    and collective bytes over ICI and DCN bandwidth (one direction: half the published
    bidirectional figure); from it tokens/s per chip and the MFU ceiling against the peak;
  the collectives by kind, with the bytes each chip sends over ICI and over DCN.

The estimate bounds the compiled program on the published figures (hardware.CHIPS); it is not a
measurement: overlap of compute and communication, kernel efficiency and the input pipeline are
outside it.
"""

import os

# No metadata server to ask on a host that is not a TPU VM; compiling only, so several processes
# may load libtpu at once.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import importlib.util
import json
import re

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec

from flan_jax import checkpoint, commands, decode, hardware, hlo_cost, optim, scoring, sharding
from flan_jax import train
from flan_jax.model import attention_implementation, from_config, train_flops_per_token

LIBTPU = "libtpu==0.0.42.1"  # the version jax[tpu]==0.10.2 pins
# Cloud TPU type -> (libtpu's chip name, TensorCores a chip counts for in the type's number).
_GENERATIONS = {"v4": ("v4", 2), "v5p": ("v5p", 2), "v5litepod": ("v5e", 1), "v5e": ("v5e", 1),
                "v6e": ("v6e", 1)}
# Slice shapes by chips, as Cloud TPU builds them (2D: v5e, v6e; 3D: v4, v5p).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
SCORED_COLUMNS = 64  # answer-option tokens per scoring row put through the vocabulary projection


def topology_devices(name: str, num_slices: int = 1):
  """The compile-only devices of `num_slices` slices of Cloud TPU type `name` (v4-32,
  v5litepod-16, v5p-64, v6e-64, ...)."""
  match = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name)
  generation, per_chip = _GENERATIONS[match.group(1)] if match else (None, 1)
  chips = int(match.group(2)) // per_chip if match else 0
  shape = (_SHAPES_3D if per_chip == 2 else _SHAPES_2D).get(chips)
  if not shape:
    raise ValueError(f"unknown topology {name!r}: give a Cloud TPU type such as v4-32, "
                     f"v5litepod-16, v5p-64 or v6e-64 (chips: {', '.join(map(str, _SHAPES_2D))} "
                     f"for v5e/v6e; cores: twice {', '.join(map(str, _SHAPES_3D))} for v4/v5p)")
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError(f"compiling for a TPU needs libtpu on this host: pip install {LIBTPU}")
  from jax.experimental import topologies
  options = {"chip_config_name": "megacore"} if generation == "v4" else {}
  if num_slices > 1:
    options["num_slices"] = num_slices
  description = topologies.get_topology_desc(platform="tpu", topology_name=f"{generation}:{shape}",
                                             **options)
  return description.devices


def startup_checks(config, topology: str, num_slices: int = 1):
  """What `train` checks before it trains, on the topology's chips (shapes only): the mesh, the
  batch sizes it divides, every parameter's split. Returns (mesh, model). Mutates `config`: the
  model compiles for TPU, and with several slices mesh.data spans them (mesh.dcn_data), so that
  the data-centre network carries only data parallelism."""
  devices = topology_devices(topology, num_slices)
  config.model.platform = "tpu"
  config.model.dtype = hardware.compute_dtype(config.model.dtype, "tpu")
  if num_slices > 1:
    if config.mesh.data != -1:
      config.mesh.data *= num_slices
    config.mesh.dcn_data = num_slices
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.resolve_batch_size(config, mesh)
  model = from_config(config.model)
  sharding.param_shapes(model, mesh, sharding.rules(config.sharding_rules))
  return mesh, model


def plan(config, topology: str, num_slices: int = 1) -> dict:
  """Compiles the config's train step, scoring and decoding step for `num_slices` slices of
  `topology`; the report (see the module docstring) as a dict. Mutates `config` (startup_checks)."""
  mesh, model = startup_checks(config, topology, num_slices)
  kind = mesh.devices.flat[0].device_kind
  chip, rules = hardware.CHIPS[kind], sharding.rules(config.sharding_rules)
  report = {"topology": topology, "num_slices": num_slices, "chips": mesh.size,
            "device_kind": kind, "mesh": dict(mesh.shape), "dtype": config.model.dtype,
            "batch_size": config.data.batch_size, "seq_len": config.data.seq_len,
            "eval_batch_size": eval_batch_size(config)}
  device_slices = [getattr(d, "slice_index", 0) for d in mesh.devices.flat]
  with sharding.context(mesh, rules):
    for name, (jitted, args, static, facts) in programs(config, model, mesh, rules).items():
      compiled = jitted.lower(*args, **static).compile()
      report[name] = _analyse(compiled, facts, chip, mesh.size, device_slices)
  memory = report["train"]["memory"]
  rows = config.data.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])
  free = chip.hbm_gib * 2**30 - (memory["arguments"] + memory["outputs"] - memory["aliased"])
  report["train"]["max_rows_per_shard"] = max(0, int(free / (memory["temporaries"] / rows)))
  return report


def eval_batch_size(config) -> int:
  """The rows scoring and decoding are compiled for: the evaluators' largest batch (config.evals), or
  the train batch's where none batches."""
  return max(sharding.evaluator_batch_sizes(config.evals).values(), default=config.data.batch_size)


def programs(config, model, mesh, rules):
  """{name: (jitted function, argument shapes, static keyword arguments, facts)} of the train
  step, scoring and one decoding step on `mesh`; facts: attention, tokens, model_flops and
  kernel_flops (the whole step's, all chips). Call under sharding.context(mesh, rules)."""
  cfg, seq_len = model.cfg, config.data.seq_len

  def rows_of(rows, length, dtype=jnp.int32):
    return jax.ShapeDtypeStruct((rows, length), dtype, sharding=sharding.batch_sharding(mesh))

  optimizer, schedule = optim.make(config.optim, config.train.steps)
  shapes, shardings = train.state_shapes(model, optimizer, mesh, rules,
                                         frozen_copy=train.frozen_copy(config))
  b, per_token = config.data.batch_size, train_flops_per_token(cfg, seq_len)
  step_factor = train.flops_per_token(config) / per_token  # DPO's reference forward, if it has one
  floats = ("loss_weights", "reference_log_probs")
  batch = {k: rows_of(b, seq_len, jnp.float32 if k in floats else jnp.int32)
           for k in train.batch_keys(config)}
  attention = attention_implementation(cfg, seq_len)
  # Splash's FLOPs are invisible to XLA: the model's causal attention count stands for them.
  kernel_flops = b * seq_len * (per_token - train_flops_per_token(cfg, 0))
  out = {"train": (train.jit_train_step(model, optimizer, schedule, config, mesh, shardings),
                   (checkpoint.abstract(shapes, shardings), batch), {},
                   dict(attention=attention, tokens=b * seq_len,
                        model_flops=step_factor * b * seq_len * per_token,
                        kernel_flops=step_factor * kernel_flops if attention == "splash" else 0.0))}

  params = sharding.param_shapes(model, mesh, rules)
  b = eval_batch_size(config)
  scored = {k: rows_of(b, seq_len) for k in ("inputs", "positions", "segment_ids", "context_ids")}
  scored |= {k: rows_of(b, SCORED_COLUMNS, jnp.float32 if k == "loss_weights" else jnp.int32)
              for k in ("scored_columns", "targets", "loss_weights")}
  # A forward pass over every token; the vocabulary projection for the scored columns only.
  unembedding = 2.0 * cfg.d_model * cfg.vocab_size
  score_flops = b * (seq_len * (per_token / 3 - unembedding) + SCORED_COLUMNS * unembedding)
  out["score"] = (scoring.token_log_likelihoods, (params, scored),
                  dict(model=model, chunk_len=config.loss.chunk_len),
                  dict(attention=attention_implementation(cfg, seq_len, kernels=False),
                       tokens=b * seq_len, model_flops=score_flops, kernel_flops=0.0))

  # [b, kv_heads, s, d] per layer, rows split as the batch's (behind a layers axis when scanned).
  rows = PartitionSpec(None, sharding.BATCH_AXES) if cfg.scan_layers else PartitionSpec(
      sharding.BATCH_AXES)
  cache = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, rows)),
      decode.cache_shapes(model, b, seq_len))
  index = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))
  # A token's forward pass over a full cache: 2 x matmul parameters, q.k and p.v over every slot.
  attend = 4.0 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  decode_flops = b * (train_flops_per_token(cfg, 0) / 3 + attend)
  one = rows_of(b, 1)
  step_args = (params, cache, one, one, one, index, rows_of(b, seq_len))
  out["decode"] = (jax.jit(decode.forward, static_argnames="model"), step_args, dict(model=model),
                   dict(attention="einsum over the KV cache", tokens=b, model_flops=decode_flops,
                        kernel_flops=0.0))
  return out


def _analyse(compiled, facts: dict, chip: hardware.Chip, chips: int, device_slices) -> dict:
  memory = compiled.memory_analysis()
  sizes = {"arguments": memory.argument_size_in_bytes, "temporaries": memory.temp_size_in_bytes,
           "outputs": memory.output_size_in_bytes, "aliased": memory.alias_size_in_bytes,
           "code": memory.generated_code_size_in_bytes}
  per_chip = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
              + sizes["code"])
  cost = hlo_cost.analyse(compiled.as_text(), device_slices)
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  flops, model_flops = cost.flops + facts["kernel_flops"] / chips, facts["model_flops"] / chips
  ici = sum(c["ici_bytes"] for c in cost.collectives.values())
  dcn = sum(c["dcn_bytes"] for c in cost.collectives.values())
  roofline = {  # a chip does the model's FLOPs at least (Splash's are the model's count)
      "compute_s": max(flops, model_flops) / (chip.peak_tflops * 1e12),
      "memory_s": cost.bytes / (chip.hbm_gb_per_s * 1e9),
      "ici_s": ici / (chip.ici_gb_per_s / 2 * 1e9) if ici else 0.0,
      "dcn_s": dcn / (chip.dcn_gb_per_s * 1e9) if dcn else 0.0}
  step_s = max(roofline.values())
  hbm = chip.hbm_gib * 2**30
  return {
      "attention": facts["attention"],
      "bytes_per_chip": per_chip,
      "hbm_bytes_per_chip": hbm,
      "fits": per_chip <= hbm,
      "memory": sizes,
      "flops_per_step": flops,
      "model_flops_per_step": model_flops,
      "xla_cost_analysis_flops": float(xla.get("flops", 0.0)),
      "custom_kernels_per_step": cost.custom_kernels,
      "bytes_accessed_per_step": cost.bytes,
      "roofline": roofline,
      "estimated_step_s": step_s,
      "tokens_per_s_per_chip": facts["tokens"] / step_s / chips,
      "mfu": model_flops / step_s / (chip.peak_tflops * 1e12),
      "collectives": {kind: {"count": int(c["count"]), "bytes": c["bytes"],
                             "ici": c["ici_bytes"], "dcn": c["dcn_bytes"]}
                      for kind, c in sorted(cost.collectives.items())},
  }


def format_report(report: dict) -> str:
  """The report as text: a line on the slice, then three lines a program."""
  gib = 2**30
  lines = [f"{report['topology']} x {report['num_slices']}: {report['chips']} chips "
           f"({report['device_kind']}), mesh {report['mesh']}, {report['batch_size']} rows of "
           f"{report['seq_len']} tokens a step, matmuls in {report['dtype']}"]
  for name in ("train", "score", "decode"):
    r = report[name]
    memory, roofline = r["memory"], r["roofline"]
    fits = "fits" if r["fits"] else "DOES NOT FIT"
    rows = f", at most {r['max_rows_per_shard']} rows per shard" if name == "train" else ""
    collectives = ", ".join(
        f"{kind} x{c['count']} {c['ici'] / 1e6:,.1f} MB ICI"
        + (f" + {c['dcn'] / 1e6:,.1f} MB DCN" if c["dcn"] else "")
        for kind, c in r["collectives"].items())
    lines += [
        f"{name}: attention {r['attention']}; {r['bytes_per_chip'] / gib:.2f} GiB per chip of "
        f"{r['hbm_bytes_per_chip'] / gib:.0f} ({fits}: arguments {memory['arguments'] / gib:.2f}, "
        f"temporaries {memory['temporaries'] / gib:.2f}){rows}",
        f"  {r['flops_per_step'] / 1e12:.3f} TFLOP per chip and step (model "
        f"{r['model_flops_per_step'] / 1e12:.3f}, XLA's cost_analysis "
        f"{r['xla_cost_analysis_flops'] / 1e12:.3f}); roofline "
        + ", ".join(f"{k[:-2]} {v * 1e3:.1f} ms" for k, v in roofline.items())
        + f" -> {r['estimated_step_s'] * 1e3:.1f} ms: {r['tokens_per_s_per_chip']:,.0f} tokens/s "
        f"per chip, MFU ceiling {r['mfu']:.1%}",
        f"  collectives: {collectives or 'none'}"]
  return "\n".join(lines)


def main(argv):
  commands.start(argv)
  try:
    report = plan(flags.FLAGS.config, flags.FLAGS.topology, flags.FLAGS.num_slices)
  except ValueError as error:  # a configuration that does not fit the topology, or no libtpu
    raise SystemExit(f"plan: {error}") from None
  print(json.dumps(report, indent=1) if flags.FLAGS.json else format_report(report))


if __name__ == "__main__":
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/flan2021.py[:arg].",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "Cloud TPU type: v4-32, v5litepod-16, v5p-64, v6e-64, ...",
                      required=True)
  flags.DEFINE_integer("num_slices", 1, "Slices joined by the data-centre network (mesh.data).")
  flags.DEFINE_bool("json", False, "Print the report as one JSON object.")
  app.run(main)
