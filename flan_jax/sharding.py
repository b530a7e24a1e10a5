"""The device mesh and the logical-axis rules that place every array on it.

The mesh has three named axes: `data` (replicas), `fsdp` (replicas that also
split the parameters and optimiser state, ZeRO-3 style) and `tensor` (splits
heads, MLP and vocabulary dimensions inside each matmul). The batch is split
over data x fsdp. Model code names array dimensions with the logical axis names
defined here; a rule set maps those names onto mesh axes. Earlier rules win: a mesh axis that
an array already uses (fsdp for its batch dimension, say) is not used twice.
"""

import contextlib
import math

import flax.linen as nn
import jax
from absl import logging
import jax.numpy as jnp
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axis names of parameters and activations (model.py names its arrays with them).
BATCH, LENGTH, EMBED, VOCAB, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS = (
    "batch", "length", "embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "layers")

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DCN_AXES = ("data", "fsdp")  # the axes a mesh may split across slices

_BATCH_RULE = ((BATCH, BATCH_AXES),)
_FSDP_RULES = ((EMBED, "fsdp"),)
_TENSOR_RULES = ((HEADS, "tensor"), (KV_HEADS, "tensor"), (MLP, "tensor"), (VOCAB, "tensor"))
RULES = {
    "dp": _BATCH_RULE,  # parameters replicated
    "fsdp": _BATCH_RULE + _FSDP_RULES,
    "tp": _BATCH_RULE + _TENSOR_RULES,
    "fsdp_tp": _BATCH_RULE + _TENSOR_RULES + _FSDP_RULES,
}


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A Mesh of `devices` (default: all) with sizes from `mesh_config` {data, fsdp, tensor}; one may be -1.

  With `dcn_data` / `dcn_fsdp` > 1 (default 1) those axes span that many slices (TPU) or processes
  (devices all of one slice), the rest of each axis inside one: jax's hybrid mesh, whose collectives
  cross the slower network only on those axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
  described = ", ".join(f"mesh.{axis}={size}" for axis, size in sizes.items())
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f"{described}: sizes must be positive, with at most one -1 (fill the remaining devices)")
  known = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if len(devices) % known:
      raise ValueError(f"{described}: {len(devices)} devices do not divide by {known}")
    sizes[fill[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"{described} needs {math.prod(sizes.values())} devices, but there are {len(devices)} "
                     f"({devices[0].platform}); make the product match or set one axis to -1")
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  dcn = {axis: int(mesh_config.get(f"dcn_{axis}", 1)) for axis in DCN_AXES}
  if math.prod(dcn.values()) == 1:
    # Hardware-aware order on TPU and GPU (neighbouring devices share the innermost axis).
    return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES)
  slices = len({getattr(d, "slice_index", None) for d in devices})
  by_process = slices == 1  # one slice (or none reported): hosts are the groups, as on GPU clusters
  groups = len({d.process_index for d in devices}) if by_process else slices
  for axis, parts in dcn.items():
    if parts < 1 or sizes[axis] % parts:
      raise ValueError(f"mesh.dcn_{axis}={parts} must be positive and divide mesh.{axis}={sizes[axis]}")
  if math.prod(dcn.values()) != groups:
    raise ValueError(f"mesh.dcn_data={dcn['data']} x mesh.dcn_fsdp={dcn['fsdp']} must equal the number of "
                     f"{'processes' if by_process else 'slices'} the devices belong to ({groups})")
  dcn_shape = tuple(dcn.get(axis, 1) for axis in MESH_AXES)
  inner = tuple(size // parts for size, parts in zip(shape, dcn_shape))
  return Mesh(mesh_utils.create_hybrid_device_mesh(inner, dcn_shape, devices, process_is_granule=by_process),
              MESH_AXES)


def inference_placement(model):
  """(mesh, rules, param_shapes) for inference: the parameters split FSDP-style over all devices, so
  that a model larger than one device loads; one device where some parameter does not divide."""
  mesh, fsdp = make_mesh(dict(data=1, fsdp=-1, tensor=1)), RULES["fsdp"]
  try:
    return mesh, fsdp, param_shapes(model, mesh, fsdp)
  except ValueError as error:
    logging.warning("parameters on one device: %s", error)
    mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    return mesh, fsdp, param_shapes(model, mesh, fsdp)


def rules(name: str):
  if name not in RULES:
    raise ValueError(f"sharding_rules={name!r}: choose from {', '.join(RULES)}")
  return RULES[name]


@contextlib.contextmanager
def context(mesh: Mesh, logical_rules):
  """The mesh and rules under which the model's logical activation constraints take effect.

  Trace jitted model code inside it; outside it, flax ignores the constraints.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules):
    yield


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[batch, ...] arrays: rows split over data x fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def init_params(model, mesh: Mesh, key):
  """model.init's boxed parameters (a row per batch shard, one token: the shapes do not depend on it)."""
  dummy = jnp.zeros((mesh.shape["data"] * mesh.shape["fsdp"], 1), jnp.int32)
  return model.init(key, dummy, dummy, dummy)["params"]


def param_shapes(model, mesh: Mesh, logical_rules):
  """Parameters as ShapeDtypeStructs carrying their shardings, computed without initialising."""
  # The key inside the trace: nothing runs eagerly, so the mesh may be a topology's compile-only devices.
  boxed = jax.eval_shape(lambda: init_params(model, mesh, jax.random.key(0)))
  shardings = param_shardings(boxed, mesh, logical_rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_values(boxed),
                      shardings)


def resolve_batch_size(config, mesh: Mesh):
  """Sets data.batch_size to data.rows_per_shard rows for each data x fsdp shard of the mesh where
  rows_per_shard is set (> 0), so that the global batch follows the device count; then checks, before
  anything trains, that data.batch_size and every evaluator's batch_size (config.evals) divide over
  the shards."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.data.rows_per_shard > 0:
    config.data.batch_size = config.data.rows_per_shard * shards
  check_batch(config.data.batch_size, config.train.microbatches, mesh)
  for key, rows in evaluator_batch_sizes(config.evals).items():
    if rows % shards:
      raise ValueError(f"{key}={rows} must be a multiple of the {shards} data x fsdp shards of mesh "
                       f"{dict(mesh.shape)}: evaluation splits its rows over them")


def evaluator_batch_sizes(evals) -> dict[str, int]:
  """{"evals.<name>.batch_size": rows} of config.evals' entries that batch."""
  return {f"evals.{name}.batch_size": entry["batch_size"] for name, entry in evals.items()
          if "batch_size" in entry}


def check_batch(batch_size: int, microbatches: int, mesh: Mesh):
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % (microbatches * shards):
    raise ValueError(f"data.batch_size={batch_size} must divide into train.microbatches={microbatches} "
                     f"microbatches of whole rows for each of the {shards} data x fsdp shards")


def check_process_rows(mesh: Mesh, batch_size: int, process_of=lambda device: device.process_index):
  """Raises unless each process's devices hold one contiguous block of batch_size / processes rows,
  no two processes the same rows: the input pipeline builds each process's own rows. (It fails when,
  say, the tensor axis spans hosts, so that two processes would have to feed identical rows.)"""
  rows = {}
  for device, index in batch_sharding(mesh).devices_indices_map((batch_size,)).items():
    rows.setdefault(process_of(device), set()).update(range(*index[0].indices(batch_size)))
  per_process = batch_size // len(rows)
  overlap = len(set().union(*rows.values())) < batch_size
  for process, held in sorted(rows.items()):
    if overlap or len(held) != per_process or max(held) - min(held) + 1 != len(held):
      raise ValueError(f"mesh {dict(mesh.shape)}: process {process}'s devices hold rows {sorted(held)} of each batch "
                       f"of data.batch_size={batch_size}; each of the {len(rows)} processes needs its own contiguous "
                       f"{per_process} rows (split data/fsdp across hosts, keep tensor within one)")


def param_shardings(boxed_params, mesh: Mesh, logical_rules):
  """NamedShardings for a tree of nn.LogicallyPartitioned parameters (e.g. from jax.eval_shape(init)).

  Raises if a parameter dimension does not divide by the mesh axes it is split over.
  """
  specs = nn.get_partition_spec(boxed_params)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, logical_rules)
  for path, param in jax.tree_util.tree_leaves_with_path(abstract_values(boxed_params)):
    sharding = _lookup(shardings, path)
    for dim, (size, axes) in enumerate(zip(param.shape, sharding.spec)):
      split = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
      if size % split:
        raise ValueError(f"parameter {jax.tree_util.keystr(path)} {param.shape}: dimension {dim} ({size}) does "
                         f"not divide over mesh axes {axes} ({split} devices); change the mesh or sharding_rules")
  return shardings


def abstract_values(boxed_params):
  """The arrays inside the boxes (nn.unbox would also apply sharding constraints, which need a trace)."""
  return jax.tree.map(lambda box: box.value, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _lookup(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def optimizer_shardings(abstract_opt_state, abstract_params, shardings, mesh: Mesh):
  """Shardings for the optimizer state: a state leaf whose path ends with a parameter's path and
  whose shape is that parameter's (Adam's moments) takes the parameter's sharding; the rest (step
  counts, Adafactor's factored row and column statistics) are small and replicated."""
  by_path = {tuple(path): (param.shape, _lookup(shardings, path))
             for path, param in jax.tree_util.tree_leaves_with_path(abstract_params)}

  def place(path, leaf):
    for start in range(len(path)):
      shape, sharding = by_path.get(tuple(path[start:]), (None, None))
      if shape == leaf.shape:
        return sharding
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(place, abstract_opt_state)
