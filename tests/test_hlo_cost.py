import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import hlo_cost


def _compiled(fn, *shapes):
  return jax.jit(fn).lower(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)).compile()


def test_a_scanned_matmul_counts_once_per_iteration_where_xla_counts_it_once():
  """Seven [64, 128] x [128, 128] products under a scan: 7 x 2 x 64 x 128 x 128 FLOPs."""
  def fn(x, ws):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]
  compiled = _compiled(fn, (64, 128), (7, 128, 128))
  cost = hlo_cost.analyse(compiled.as_text())
  assert cost.flops == 7 * 2 * 64 * 128 * 128
  assert cost.unknown_trip_counts == 0
  # XLA's own count: the body once.
  assert compiled.cost_analysis()["flops"] < 2 * 2 * 64 * 128 * 128
  # Memory traffic: at least the seven weight matrices read once each.
  assert cost.bytes >= 7 * 128 * 128 * 4


def test_collectives_are_counted_with_their_groups_bytes_and_slices():
  """A sum within each of 2 groups of 4 devices: the collective stays within a slice when each slice
  holds one group, and crosses slices when they interleave."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("slice", "chip"))
  rows = NamedSharding(mesh, PartitionSpec(("slice", "chip")))
  x = jax.ShapeDtypeStruct((8, 256), jnp.float32, sharding=rows)
  fn = jax.jit(lambda x: x.reshape(2, 4, 256).sum(axis=1),
               out_shardings=NamedSharding(mesh, PartitionSpec("slice")))
  text = fn.lower(x).compile().as_text()
  within = hlo_cost.analyse(text, device_slices=[0, 0, 0, 0, 1, 1, 1, 1])
  kinds = within.collectives
  assert sum(c["count"] for c in kinds.values()) >= 1
  sent = sum(c["bytes"] for c in kinds.values())
  assert sent == pytest.approx(sum(c["ici_bytes"] for c in kinds.values())) and sent > 0
  across = hlo_cost.analyse(text, device_slices=[0, 1, 0, 1, 0, 1, 0, 1])
  assert sum(c["dcn_bytes"] for c in across.collectives.values()) == pytest.approx(sent)
