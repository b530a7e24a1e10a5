"""Orbax checkpoints of the train state together with the data iterator's position.

A checkpoint is `<workdir>/checkpoints/<step>/` with two items: `state` (the
TrainState, every process writing its own shards) and `data` (the input
pipeline's position: one JSON file per data shard, written by the process that
reads that shard, so a run with another process count can restore it). Saves are asynchronous; Orbax writes into a
temporary directory and renames it when complete, so an interrupted save never
looks like a checkpoint. A complete but unreadable one (truncated or corrupted
files) is skipped with a warning in favour of the one before it, and moved to
`<workdir>/checkpoints_unreadable/` (kept for inspection, out of the way of the
run's next save of that step).
"""

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from flan_jax import lora, sharding
from flan_jax.model import from_config


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class DataHandler:
  """Orbax handler for the iterator of pipeline.batches: a zip of per-shard iterators, saved one
  file per shard (`shard_<i>.json`), so that any process count can take the shards back."""

  def save(self, directory: epath.Path, args: "DataSave"):
    for offset, state in enumerate(args.iterator.get_state()["parents"]):
      (directory / f"shard_{args.first_shard + offset}.json").write_text(json.dumps(state))

  def restore(self, directory: epath.Path, args: "DataRestore"):
    count = len(args.iterator.get_state()["parents"])
    paths = [directory / f"shard_{args.first_shard + offset}.json" for offset in range(count)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
      raise FileNotFoundError(f"data checkpoint lacks {missing}; was data.shards changed?")
    args.iterator.set_state({"parents": [json.loads(p.read_text()) for p in paths]})
    return args.iterator

  def metadata(self, directory):
    del directory

  def structure(self, directory):
    del directory

  def finalize(self, directory):
    del directory

  def close(self):
    pass

  @classmethod
  def typestr(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(DataHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  iterator: Any
  first_shard: int  # the shard index of the iterator's first part


@ocp.args.register_with_handler(DataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  iterator: Any
  first_shard: int


def first_shard(data_shards: int) -> int:
  """The first data shard this process reads (pipeline.batches gives each a contiguous block)."""
  return jax.process_index() * data_shards // jax.process_count()


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory(workdir), options=options)


def save(checkpoints: ocp.CheckpointManager, step: int, state, data_iterator, data_shards: int):
  """Starts an asynchronous save of `state` (less its frozen LoRA base) and the iterator's position
  after `step` updates."""
  data = DataSave(data_iterator, first_shard(data_shards))
  checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state.replace(frozen={})), data=data),
                   force=True)


def abstract(state_shapes, shardings):
  """ShapeDtypeStructs carrying the shardings to restore into (any mesh, not only the saving one)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shapes, shardings)


def restore_latest(checkpoints: ocp.CheckpointManager, target, data_iterator, data_shards: int):
  """The newest readable checkpoint's state (placed like `target`; `frozen` left empty), with
  `data_iterator` moved to its position; None if there is no checkpoint. Unreadable checkpoints are
  skipped with a warning."""
  target = target.replace(frozen={})
  failures = []
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      restored = checkpoints.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=DataRestore(data_iterator, first_shard(data_shards))))
    except Exception as error:  # noqa: BLE001 -- any failure to read means: fall back to the previous one
      path = os.path.join(checkpoints.directory, str(step))
      logging.warning("checkpoint %s is unreadable (%s: %s); trying the one before it", path,
                      type(error).__name__, str(error).splitlines()[0] if str(error) else "")
      failures.append(path)
      continue
    if failures:
      logging.warning("resuming from step %d; unreadable newer checkpoints: %s", step, ", ".join(failures))
      _move_aside(checkpoints, failures)
    return restored.state
  if failures:
    raise RuntimeError(f"no readable checkpoint in {checkpoints.directory}: {', '.join(failures)} all failed; "
                       "move them aside to start afresh")
  return None


def _move_aside(checkpoints: ocp.CheckpointManager, paths):
  if jax.process_index() == 0:
    aside = os.path.join(os.path.dirname(str(checkpoints.directory)), "checkpoints_unreadable")
    os.makedirs(aside, exist_ok=True)
    for path in paths:
      target = os.path.join(aside, f"{os.path.basename(path)}-{int(time.time())}")
      shutil.move(path, target)
      logging.warning("moved unreadable checkpoint %s to %s", path, target)
  multihost_utils.sync_global_devices("checkpoint: unreadable moved aside")
  checkpoints.reload()


def restore_params(path: str, target_params, step: int | None = None):
  """(step, parameters) from a checkpoint directory (a run's `checkpoints/`, or one written by
  flan_jax.convert): the newest step unless `step` is given, placed like `target_params`
  (ShapeDtypeStructs with shardings). The optimiser state is not read."""
  steps = ocp.utils.checkpoint_steps(path) if os.path.isdir(path) else []
  if not steps:
    raise FileNotFoundError(f"{path!r}: no checkpoint steps in this directory")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"{path!r} has no step {step}; it has {sorted(steps)}")
  target = {"params": target_params}
  restored = ocp.PyTreeCheckpointer().restore(os.path.join(path, str(step), "state"), args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  return step, restored["params"]


def restore_run_params(workdir: str, init_from: str, target_params, step: int | None = None):
  """(step, parameters) of a training run for inference: its checkpoint's parameters, or with LoRA
  its adapters over the base weights of `init_from` (which runs with LoRA never checkpoint)."""
  adapters, base = lora.split(target_params)
  if not jax.tree.leaves(adapters):
    return restore_params(directory(workdir), target_params, step)
  step, adapters = restore_params(directory(workdir), adapters, step)
  return step, lora.combine(adapters, restore_params(init_from, base)[1])


def load_for_inference(model_fields: dict, *, checkpoint_dir: str = "", workdir: str = "", init_from: str = "",
                       step: int | None = None):
  """(step, parameters on one device) of a checkpoint directory (e.g. an imported one), or of a training
  run's workdir (see restore_run_params)."""
  model = from_config(model_fields)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = sharding.rules("fsdp")
  with sharding.context(mesh, rules):
    target = sharding.param_shapes(model, mesh, rules)
    if checkpoint_dir:
      return restore_params(checkpoint_dir, target, step)
    return restore_run_params(workdir, init_from, target, step)
