"""FLOPs, HBM traffic and collectives of a compiled XLA program, read from its optimised HLO.

XLA's own `cost_analysis()` counts the body of a while loop once, so a model whose layers are a
`scan` (or whose loss runs over chunks, or whose batch is accumulated in microbatches) shows a
fraction of its work. Here every computation is counted as many times as it runs: a loop body
times its trip count, fusions and calls as often as the instructions that call them. The counts
are per device (a compiled program is one device's SPMD program):

  flops: 2 x the multiply-adds of every dot and convolution (a convolution's padded window
    positions excluded, as XLA counts them); what a custom kernel (Pallas) computes is invisible,
    and so are products XLA lowers as elementwise multiplies and reductions (a decoding step with
    one row per chip: its matrix-vector products);
  bytes: what the unfused instructions read from and write to HBM (operands and results not in
    on-chip memory; slices as what they keep, in-place updates as the update);
  collectives: per kind, how many run and the bytes each device sends for them (ring algorithms:
    an all-reduce of S bytes over n devices sends 2 S (n - 1) / n), split into those whose groups
    stay within a slice (ICI) and those that span slices (DCN). A multi-slice TPU program is one
    slice's: its collectives stay within the slice, and what crosses slices are its host-transfer
    `send`s to the MegaScale runtime, each tagged with the collective it is part of.
"""

import dataclasses
import math
import re

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8,
                "s64": 8, "u64": 8, "c64": 8, "c128": 16}
# Instructions that move no data of their own (views, bookkeeping, calls whose bodies count).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
               "conditional", "after-all", "partition-id", "replica-id", "iota", "opt-barrier"}
_SLICING = ("dynamic-slice", "slice", "gather")
# dtype[dims]{layout}; a layout's S(n), n > 0, puts the array in on-chip memory (VMEM, SMEM).
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+) = ")
_NAME = r"%([\w.\-]+)"


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str  # the result's type: an array type or a tuple of them
  opcode: str
  arguments: str  # the text between the opcode's parentheses (a constant's value)
  operands: list  # names of the operand instructions
  attributes: str  # everything after the operand list
  root: bool  # the computation's result


@dataclasses.dataclass
class Cost:
  flops: float = 0.0
  bytes: float = 0.0
  # kind -> {count, bytes, ici_bytes, dcn_bytes}
  collectives: dict = dataclasses.field(default_factory=dict)
  custom_kernels: float = 0.0  # Pallas/Mosaic kernel launches (tpu_custom_call), as they run
  unknown_trip_counts: int = 0  # loops whose trip count could not be read (counted once)


def analyse(hlo_text: str, device_slices=None) -> Cost:
  """The Cost of one execution of the module's ENTRY computation. `device_slices[i]`: the slice of
  the program's logical device i (None: one slice, every collective on ICI)."""
  computations, entry = _parse(hlo_text)
  by_name = {i.name: i for body in computations.values() for i in body}
  fused = {_called(i, "calls") for body in computations.values() for i in body
           if i.opcode == "fusion"}
  cost = Cost()

  def visit(name: str, times: float):
    for instruction in computations[name]:
      op = instruction.opcode
      _count(instruction, times, by_name, device_slices, cost)
      if name not in fused and op not in _NO_TRAFFIC and not op.endswith("-done"):
        cost.bytes += times * _traffic(instruction, computations, by_name)
      if op == "while":
        trips = _trip_count(instruction, computations, by_name)
        cost.unknown_trip_counts += trips is None
        visit(_called(instruction, "body"), times * (1 if trips is None else trips))
      elif op in ("fusion", "call", "async-start") or (
          op == "custom-call" and "calls=" in instruction.attributes):
        visit(_called(instruction, "calls"), times)
      elif op == "conditional":  # the largest branch
        listed = instruction.attributes.split("branch_computations=")[-1].split("}")[0]
        branches = re.findall(_NAME, listed)
        if branches:
          visit(max(branches, key=lambda b: len(computations.get(b, ()))), times)

  visit(entry, 1.0)
  return cost


def _parse(text: str):
  """{computation name: [Instruction]} and the ENTRY computation's name."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    if not line.startswith(" ") and line.rstrip().endswith("{"):
      header = line.split()
      is_entry = header[0] == "ENTRY"
      current = header[1 if is_entry else 0].lstrip("%")
      computations[current] = []
      entry = current if is_entry else entry
    elif current is not None and (match := _INSTRUCTION.match(line)):
      instruction = _instruction(match.group(2), line[match.end():], bool(match.group(1)))
      computations[current].append(instruction)
  return computations, entry


def _instruction(name: str, rest: str, root: bool) -> Instruction:
  """`rest`: "TYPE opcode(operands), attributes"."""
  end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.index(" ")  # a tuple type
  shape, rest = rest[:end], rest[end:].lstrip()
  opcode, _, rest = rest.partition("(")
  close = _closing("(" + rest, 0)
  arguments = rest[:close - 1]
  return Instruction(name, shape, opcode, arguments, re.findall(_NAME, arguments), rest[close:],
                     root)


def _closing(text: str, start: int) -> int:
  """The index of the parenthesis that closes the one at `start`."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i
  return len(text) - 1


def _called(instruction: Instruction, key: str) -> str:
  return re.search(key + r"=%?([\w.\-]+)", instruction.attributes).group(1)


def _arrays(shape: str, hbm_only: bool = False):
  """[(dtype, dims)] of an array or tuple type (hbm_only: those not in on-chip memory)."""
  return [(dtype, [int(d) for d in dims.split(",") if d])
          for dtype, dims, layout in _ARRAY.findall(shape)
          if dtype in _DTYPE_BYTES and not (hbm_only and _ON_CHIP.search(layout))]


def _bytes(shape: str, hbm_only: bool = False) -> float:
  return sum(_DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in _arrays(shape, hbm_only))


def _dims(shape: str):
  arrays = _arrays(shape)
  return arrays[0][1] if arrays else []


def _trip_count(instruction: Instruction, computations, by_name) -> int | None:
  """XLA's known_trip_count where it recorded one, else read off the loop: the condition's
  `counter < limit` (how jax lowers scan and fori_loop), the body's `counter + step` (XLA unrolls
  some loops by 2) and the counter's start in the initial tuple (0 where not a constant)."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.attributes)
  if known:
    return int(known.group(1))
  for compare in computations.get(_called(instruction, "condition"), []):
    if (compare.opcode != "compare" or "direction=LT" not in compare.attributes
        or len(compare.operands) != 2):
      continue
    counter, limit = (by_name.get(o) for o in compare.operands)
    if (limit is None or limit.opcode != "constant" or counter is None
        or counter.opcode != "get-tuple-element"):
      continue
    index = int(re.search(r"index=(\d+)", counter.attributes).group(1))
    start = _constant_at(by_name.get(instruction.operands[0]), index, by_name) or 0
    body = computations.get(_called(instruction, "body"), [])
    root = next((i for i in reversed(body) if i.root), None)
    update = by_name.get(root.operands[index]) if root and root.opcode == "tuple" else None
    step = 1
    if update is not None and update.opcode == "add":
      steps = [by_name[o].arguments for o in update.operands
               if o in by_name and by_name[o].opcode == "constant"]
      step = int(steps[0]) if steps else 1
    return max(0, -(-(int(limit.arguments) - start) // max(step, 1)))
  return None


def _constant_at(tuple_instruction, index: int, by_name) -> int | None:
  """The integer constant at `index` of a tuple instruction; None where it is not one."""
  if tuple_instruction is None or tuple_instruction.opcode != "tuple":
    return None
  element = by_name.get(tuple_instruction.operands[index])
  return int(element.arguments) if element is not None and element.opcode == "constant" else None


def _count(instruction: Instruction, times: float, by_name, device_slices, cost: Cost):
  """Adds an instruction's FLOPs, kernel launches and collectives, `times` over."""
  op, attributes = instruction.opcode, instruction.attributes
  if op == "dot":
    cost.flops += times * _dot_flops(instruction, by_name)
  elif op == "convolution":
    cost.flops += times * _convolution_flops(instruction, by_name)
  elif op == "custom-call" and 'custom_call_target="tpu_custom_call"' in attributes:
    cost.custom_kernels += times
  kind = op[:-len("-start")] if op.endswith("-start") else op
  if kind in COLLECTIVES:
    _count_collective(kind, instruction, times, by_name, device_slices, cost)
  megascale = re.search(r'_xla_megascale_transfer_type="(\w+)"', attributes)
  if op == "send" and megascale:  # multi-slice TPU: a slice's share of a collective, over DCN
    slices = len(set(device_slices)) if device_slices else 2
    size = _bytes(by_name[instruction.operands[0]].shape)
    sent = size * (2.0 if megascale.group(1) == "ALL_REDUCE" else 1.0) * (slices - 1) / slices
    _add_collective(cost, megascale.group(1).lower().replace("_", "-"), times, sent, dcn=True)


def _traffic(instruction: Instruction, computations, by_name) -> float:
  """HBM bytes an unfused instruction reads and writes. A slice reads only what it keeps and a
  dynamic-update-slice writes only its update (in place), also inside a fusion: a fused parameter
  used only by slicing counts as the slices, a fused dynamic-update-slice result as its update."""
  def hbm(name):
    return _bytes(by_name[name].shape, hbm_only=True) if name in by_name else 0.0

  op = instruction.opcode
  if op in _SLICING:
    return 2 * _bytes(instruction.shape, hbm_only=True)
  if op == "dynamic-update-slice":
    return 2 * hbm(instruction.operands[1])
  if op.endswith("-start"):  # an asynchronous copy's result holds its source and destination
    return _bytes(instruction.shape, hbm_only=True)
  if op != "fusion":
    return _bytes(instruction.shape, hbm_only=True) + sum(map(hbm, instruction.operands))
  body = computations.get(_called(instruction, "calls"), [])
  params = {int(i.arguments): i.name for i in body if i.opcode == "parameter"}
  users = {}
  for i in body:
    for position, operand in enumerate(i.operands):
      users.setdefault(operand, []).append((i, position))
  total = 0.0
  for index, operand in enumerate(instruction.operands):
    uses = users.get(params.get(index), [])
    if uses and all(user.opcode in _SLICING and position == 0 for user, position in uses):
      total += sum(_bytes(user.shape) for user, _ in uses)
    elif not (uses and all(user.opcode == "dynamic-update-slice" and position == 0
                           for user, position in uses)):
      total += hbm(operand)  # (a buffer updated in place counts as its update, below)
  root = next((i for i in reversed(body) if i.root), None)
  if root is not None and root.opcode == "dynamic-update-slice":
    return total + _bytes(by_name[root.operands[1]].shape)
  return total + _bytes(instruction.shape, hbm_only=True)


def _dot_flops(instruction: Instruction, by_name) -> float:
  lhs = _dims(by_name[instruction.operands[0]].shape)
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.attributes)
  dims = [int(d) for d in contracting.group(1).split(",") if d] if contracting else []
  return 2.0 * math.prod(_dims(instruction.shape)) * math.prod(lhs[d] for d in dims)


def _convolution_flops(instruction: Instruction, by_name) -> float:
  """2 x output batch x output features x (input features per group) x, per spatial dimension,
  the window positions that fall inside the unpadded input, summed over the output positions."""
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instruction.attributes)
  lhs, rhs = (_dims(by_name[o].shape) for o in instruction.operands[:2])
  out = _dims(instruction.shape)
  if not (labels and lhs and rhs and out):
    return 0.0
  lhs_labels, rhs_labels, out_labels = labels.groups()
  found = re.search(r"window=\{([^}]*)\}", instruction.attributes)
  window = dict(re.findall(r"(\w+)=([\w\-]+)", found.group(1))) if found else {}
  spatial = [c for c in out_labels if c.isdigit()]

  def field(key, default):  # one value per spatial dimension
    return window[key].split("x") if key in window else [default] * len(spatial)

  sizes, strides = [int(v) for v in field("size", "1")], [int(v) for v in field("stride", "1")]
  pads_low = [int(v.split("_")[0]) for v in field("pad", "0_0")]
  positions = 1.0
  for d, label in enumerate(spatial):
    in_size, out_size = lhs[lhs_labels.index(label)], out[out_labels.index(label)]
    positions *= sum(0 <= x * strides[d] + k - pads_low[d] < in_size
                     for x in range(out_size) for k in range(sizes[d]))
  features_in = rhs[rhs_labels.index("i")]  # already per group (feature_group_count)
  return 2.0 * out[out_labels.index("b")] * out[out_labels.index("f")] * features_in * positions


def _count_collective(kind: str, instruction: Instruction, times: float, by_name, device_slices,
                      cost: Cost):
  groups = _groups(instruction.attributes)
  n = max(len(g) for g in groups) if groups else 1
  result = _bytes(instruction.shape)
  if kind == "all-reduce":
    sent = 2.0 * result * (n - 1) / n
  elif kind in ("all-gather", "all-to-all"):
    sent = result * (n - 1) / n
  elif kind == "reduce-scatter":
    sent = result * (n - 1)
  else:  # collective-permute: each device sends its operand once
    sent = _bytes(by_name[instruction.operands[0]].shape) if instruction.operands else result
  crosses = device_slices is not None and any(len({device_slices[i] for i in g}) > 1
                                              for g in groups)
  _add_collective(cost, kind, times, sent, dcn=crosses)


def _add_collective(cost: Cost, kind: str, times: float, sent: float, dcn: bool):
  entry = cost.collectives.setdefault(
      kind, {"count": 0, "bytes": 0.0, "ici_bytes": 0.0, "dcn_bytes": 0.0})
  entry["count"] += times
  entry["bytes"] += times * sent
  entry["dcn_bytes" if dcn else "ici_bytes"] += times * sent


def _groups(attributes: str):
  """The device groups of a collective (its replica groups, or its permutation's pairs), as lists
  of logical device ids."""
  pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attributes)
  if pairs:
    return [[int(x) for x in pair.split(",")]
            for pair in re.findall(r"\{(\d+,\d+)", pairs.group(1) + "}")]
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
  if mesh:  # devices laid out over named axes; a group varies the listed ones
    axes = re.findall(r"'(\w+)'=(\d+)", mesh.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    grouped = [names.index(a) for a in re.findall(r"'(\w+)'", mesh.group(2))]
    ids = np.moveaxis(np.arange(math.prod(sizes)).reshape(sizes), grouped,
                      list(range(len(sizes) - len(grouped), len(sizes))))
    return ids.reshape(-1, math.prod(sizes[g] for g in grouped)).tolist()
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attributes)
  if iota:
    dims = [int(d) for d in iota.group(3).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if iota.group(4):
      ids = ids.transpose([int(p) for p in iota.group(4).split(",")])
    return ids.reshape(int(iota.group(1)), int(iota.group(2))).tolist()
  explicit = re.search(r"replica_groups=\{(\{[\d,{} ]*\})\}", attributes)
  if explicit:
    return [[int(x) for x in group.split(",") if x]
            for group in re.findall(r"\{([\d,]*)\}", explicit.group(1))]
  return []
