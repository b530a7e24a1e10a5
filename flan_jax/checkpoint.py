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

With several processes every decision is taken together: process 0's list of
steps is the list, a step is restored only if every process read it, and one
is moved aside only when all have tried it. A checkpoint whose arrays do not
match the config's shapes is a configuration error, never "unreadable".
Paths go through `etils.epath`, so a workdir may be a bucket (`gs://...`).
"""

import dataclasses
import json
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from flan_jax import lora, sharding
from flan_jax.data import pipeline
from flan_jax.model import from_config


def directory(workdir: str) -> epath.Path:
  """`<workdir>/checkpoints`; a local workdir made absolute (Orbax needs it), a URL left as it is."""
  path = epath.Path(workdir)
  return (path if "://" in str(workdir) else path.absolute()) / "checkpoints"


class DataHandler:
  """Orbax handler for the iterator of pipeline.pack_batches, saved one file per data shard
  (`shard_<i>.json`, pipeline.shard_states), so that any process count can take the shards back."""

  def save(self, directory: epath.Path, args: "DataSave"):
    for offset, state in enumerate(pipeline.shard_states(args.state)):
      (directory / f"shard_{args.first_shard + offset}.json").write_text(json.dumps(state))

  def restore(self, directory: epath.Path, args: "DataRestore"):
    count = args.data_cfg.shards // jax.process_count()
    first = first_shard(args.data_cfg.shards)
    paths = [directory / f"shard_{first + offset}.json" for offset in range(count)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
      raise FileNotFoundError(f"data checkpoint lacks {missing}; was data.shards changed?")
    try:
      state = pipeline.join_shard_states([json.loads(p.read_text()) for p in paths],
                                         args.data_cfg.num_workers)
    except ValueError as error:
      raise ConfigMismatchError(f"{directory}: {error}") from None
    args.iterator.set_state(state)
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
  state: dict  # the iterator's get_state() after the batch of the saved step
  first_shard: int  # the shard index of the iterator's first part


@ocp.args.register_with_handler(DataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  iterator: Any
  data_cfg: Any  # config.data: its shards and num_workers


def first_shard(data_shards: int) -> int:
  """The first data shard this process reads (pipeline.batches gives each a contiguous block)."""
  return jax.process_index() * data_shards // jax.process_count()


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory(workdir), options=options,
                               item_handlers={"state": ocp.StandardCheckpointHandler(), "data": DataHandler()})


def save(checkpoints: ocp.CheckpointManager, step: int, state, data_state: dict, data_shards: int):
  """Starts an asynchronous save of `state` (less its frozen LoRA base) and the data iterator's
  position after `step` updates (its get_state() then: the loop reads ahead, so not its state now)."""
  data = DataSave(data_state, first_shard(data_shards))
  checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state.replace(frozen={})), data=data),
                   force=True)


def abstract(state_shapes, shardings):
  """ShapeDtypeStructs carrying the shardings to restore into (any mesh, not only the saving one)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shapes, shardings)


def _all_processes(ok: bool) -> bool:
  """True where `ok` holds on every process."""
  if jax.process_count() == 1:
    return ok
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _steps_of_process_0(checkpoints: ocp.CheckpointManager) -> list[int]:
  steps = np.asarray(sorted(checkpoints.all_steps(), reverse=True), np.int64)
  if jax.process_count() == 1:
    return steps.tolist()
  count = int(multihost_utils.broadcast_one_to_all(np.int64(len(steps))))
  padded = np.zeros(count, np.int64)
  padded[:min(count, len(steps))] = steps[:count]
  return multihost_utils.broadcast_one_to_all(padded).tolist()


def _leaf_name(path) -> str:
  """Orbax's name of a leaf: its keys joined by dots (`params.block_0.attention.wq`)."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class ConfigMismatchError(ValueError):
  """A checkpoint written under another config."""


def check_structure(checkpoints: ocp.CheckpointManager, step: int, target):
  """Raises ConfigMismatchError if checkpoint `step`'s arrays are not the target's names and shapes: the
  config changed under the workdir (model size, LoRA, optimiser), which falling back cannot fix."""
  stored = {leaf.name: tuple(leaf.shape) for leaf in jax.tree.leaves(checkpoints.item_metadata(step)["state"])}
  wanted = {_leaf_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(target)}
  problems = [f"{name}: {stored[name]} in the checkpoint, {shape} in the config" for name, shape in wanted.items()
              if name in stored and stored[name] != shape]
  problems += [f"{name}: only in the config" for name in wanted.keys() - stored.keys()]
  problems += [f"{name}: only in the checkpoint" for name in stored.keys() - wanted.keys()]
  problems.sort(key=lambda problem: (not problem.startswith("params."), problem))  # parameters first
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ConfigMismatchError(f"{checkpoints.directory / str(step)} was written under another config (model, LoRA "
                              f"or optimiser settings differ): {'; '.join(problems[:5])}{more}. Train with "
                              "the run's config, or in a new workdir")


def restore_latest(checkpoints: ocp.CheckpointManager, target, data_iterator, data_cfg):
  """The newest checkpoint every process can read (state placed like `target`, `frozen` left
  empty), with `data_iterator` moved to its position; None if there is no checkpoint. Unreadable
  checkpoints are skipped with a warning and, once one restores, moved aside."""
  target = target.replace(frozen={})
  failures = []
  for step in _steps_of_process_0(checkpoints):
    path, error = checkpoints.directory / str(step), None
    try:
      check_structure(checkpoints, step, target)
      restored = checkpoints.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=DataRestore(data_iterator, data_cfg)))
    except ConfigMismatchError:
      raise
    except Exception as restore_error:  # noqa: BLE001 -- any failure to read means: fall back
      error = restore_error
    if error is not None:
      logging.warning("checkpoint %s is unreadable on process %d (%s: %s)", path, jax.process_index(),
                      type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    if not _all_processes(error is None):
      logging.warning("checkpoint %s is unreadable; trying the one before it", path)
      failures.append(path)
      continue
    if failures:
      logging.warning("resuming from step %d; unreadable newer checkpoints: %s", step, ", ".join(map(str, failures)))
      _move_aside(checkpoints, failures)
    return restored.state
  if failures:
    raise RuntimeError(f"no readable checkpoint in {checkpoints.directory}: {', '.join(map(str, failures))} all "
                       "failed; move them aside to start afresh")
  return None


def _move_aside(checkpoints: ocp.CheckpointManager, paths):
  """Moves checkpoints every process failed to read to `checkpoints_unreadable/<step>-<time>`."""
  if jax.process_index() == 0:
    aside = epath.Path(checkpoints.directory).parent / "checkpoints_unreadable"
    aside.mkdir(parents=True, exist_ok=True)
    for path in paths:
      target = aside / f"{path.name}-{int(time.time())}"
      path.rename(target)
      logging.warning("moved unreadable checkpoint %s to %s", path, target)
  multihost_utils.sync_global_devices("checkpoint: unreadable moved aside")
  checkpoints.reload()


def restore_params(path: str, target_params, step: int | None = None):
  """(step, parameters) from a checkpoint directory (a run's `checkpoints/`, or one written by
  flan_jax.convert): the newest step unless `step` is given, placed like `target_params`
  (ShapeDtypeStructs with shardings). The optimiser state is not read."""
  steps = ocp.utils.checkpoint_steps(path) if epath.Path(path).is_dir() else []
  if not steps:
    raise FileNotFoundError(f"{path!r}: no checkpoint steps in this directory")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"{path!r} has no step {step}; it has {sorted(steps)}")
  target = {"params": target_params}
  restored = ocp.PyTreeCheckpointer().restore(epath.Path(path) / str(step) / "state", args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  return step, restored["params"]


def restore_run_params(workdir: str, init_from: str, target_params, step: int | None = None):
  """(step, parameters) of a training run for inference: its checkpoint's parameters, or with LoRA
  its adapters over the base weights of `init_from` (which runs with LoRA never checkpoint)."""
  adapters, base = lora.split(target_params)
  if not jax.tree.leaves(adapters):
    return restore_params(directory(workdir), target_params, step)
  step, adapters = restore_params(directory(workdir), adapters, step)
  return step, lora.combine(adapters, restore_pretrained(init_from, base))


def restore_pretrained(path: str, target_params):
  """The weights a run starts from (its train.init_from), placed like `target_params` (a model's
  without adapters): a checkpoint directory's newest (e.g. an imported one), or the newest of a
  training run's workdir, an SFT run to go on from, a LoRA run's adapters folded into its own
  starting weights."""
  run = _run_config(path)
  if run is None:
    return restore_params(path, target_params)[1]
  if not run["model"]["lora_rank"]:
    return restore_params(directory(path), target_params)[1]
  model = from_config(run["model"])
  mesh = jax.tree.leaves(target_params)[0].sharding.mesh
  shapes = sharding.param_shapes(model, mesh, sharding.rules(run["sharding_rules"]))
  _, adapters = restore_params(directory(path), lora.split(shapes)[0])
  base = restore_pretrained(run["train"]["init_from"], target_params)
  merged = lora.merge(multihost_utils.process_allgather(lora.combine(adapters, base), tiled=True),
                      model.cfg)
  return jax.tree.map(lambda host, target: jax.make_array_from_callback(
      host.shape, target.sharding, lambda index: host[index]), merged, target_params)


def _run_config(directory_path: str) -> dict | None:
  """The config.json of a training run's workdir; None for another directory."""
  path = epath.Path(directory_path) / "config.json"
  return json.loads(path.read_text()) if path.exists() else None


def read_info(checkpoint_dir: str) -> dict:
  """What a model directory says of its model: an imported checkpoint's CKPT/model.json, or of a
  training run's workdir (restore_pretrained reads its weights) the same keys from its
  config.json: model (adapters folded in), chat_format and tokenizer (the tokenizer's directory)."""
  run = _run_config(checkpoint_dir)
  if run is not None:
    return {"model": {**run["model"], "lora_rank": 0},
            "chat_format": run["data"]["template"]["format"],
            "tokenizer": run["data"]["tokenizer"]["model"]}
  path = epath.Path(checkpoint_dir) / "model.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: expected a checkpoint written by "
                            "flan_jax.convert import, or a training run's workdir")
  return {"tokenizer": str(epath.Path(checkpoint_dir) / "hf"), **json.loads(path.read_text())}


def load_for_inference(model_fields: dict, *, checkpoint_dir: str = "", workdir: str = "", init_from: str = "",
                       step: int | None = None):
  """(step, parameters, their mesh) of a checkpoint directory (e.g. an imported one), or of a training
  run's workdir (see restore_run_params): the parameters split over every device (FSDP,
  sharding.inference_placement), so that a model larger than one device's memory loads."""
  mesh, rules, target = sharding.inference_placement(from_config(model_fields))
  with sharding.context(mesh, rules):
    if checkpoint_dir:
      return (*restore_params(checkpoint_dir, target, step), mesh)
    return (*restore_run_params(workdir, init_from, target, step), mesh)


