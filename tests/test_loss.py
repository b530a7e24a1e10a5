import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import loss


def _inputs(b=2, length=24, d=16, vocab=50, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  hidden = jax.random.normal(k[0], (b, length, d))
  unembed = jax.random.normal(k[1], (d, vocab)) * 0.3
  targets = jax.random.randint(k[2], (b, length), 0, vocab)
  weights = (jax.random.uniform(k[3], (b, length)) < 0.6).astype(jnp.float32)
  return hidden, unembed, targets, weights


@pytest.mark.parametrize("z_loss, smoothing", [(0.0, 0.0), (1e-3, 0.0), (0.0, 0.1), (1e-4, 0.2)])
@pytest.mark.parametrize("chunk", [5, 8, 24, 40])  # 24 positions: chunks that do and do not divide them
def test_fused_equals_naive_with_gradients(chunk, z_loss, smoothing):
  hidden, unembed, targets, weights = _inputs()
  fused = functools.partial(loss.fused_cross_entropy, chunk_len=chunk, dtype="float32", z_loss=z_loss,
                            label_smoothing=smoothing)
  naive = functools.partial(loss.naive_cross_entropy, dtype="float32", z_loss=z_loss, label_smoothing=smoothing)
  f_val, f_grads = jax.jit(jax.value_and_grad(lambda h, u: fused(h, u, targets, weights)[0], argnums=(0, 1)))(hidden, unembed)
  n_val, n_grads = jax.jit(jax.value_and_grad(lambda h, u: naive(h, u, targets, weights)[0], argnums=(0, 1)))(hidden, unembed)
  np.testing.assert_allclose(f_val, n_val, rtol=1e-5)
  for f, n in zip(f_grads, n_grads):
    np.testing.assert_allclose(f, n, rtol=1e-4, atol=1e-6)
  assert float(fused(hidden, unembed, targets, weights)[1]) == pytest.approx(
      float(naive(hidden, unembed, targets, weights)[1]), rel=1e-5)


def test_fused_loss_never_builds_full_logits():
  hidden, unembed, targets, weights = _inputs(b=4, length=256, d=32, vocab=4096)
  grad = lambda fn: jax.jit(jax.grad(lambda h, u: fn(h, u, targets, weights)[0], argnums=(0, 1)))
  fused = grad(functools.partial(loss.fused_cross_entropy, chunk_len=32, dtype="float32"))
  naive = grad(functools.partial(loss.naive_cross_entropy, dtype="float32"))
  temp = lambda f: f.lower(hidden, unembed).compile().memory_analysis().temp_size_in_bytes
  full_logits_bytes = 4 * 256 * 4096 * 4
  chunk_logits_bytes = 4 * 32 * 4096 * 4
  assert temp(naive) >= full_logits_bytes
  # A chunk's logits and their gradient at a time: bounded by chunks, not by the 8x longer sequence.
  assert temp(fused) < 3 * chunk_logits_bytes


def test_token_weight_normalizations():
  lw = jnp.array([[0, 1, 1, 1, 0, 1, 0, 0]], jnp.float32)
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 0, 0]])
  np.testing.assert_allclose(loss.token_weights(lw, seg, "token"), lw / 4)
  # Example 1 has 3 target tokens, example 2 has 1: each example weighs 1/2.
  np.testing.assert_allclose(loss.token_weights(lw, seg, "example"), [[0, 1 / 6, 1 / 6, 1 / 6, 0, 1 / 2, 0, 0]])
  np.testing.assert_allclose(loss.token_weights(lw, seg, "constant", 8.0), lw / 8)
  # Two rows: segment 1 of each row is its own example (3 of them in all, each weighing 1/3).
  two = loss.token_weights(jnp.concatenate([lw, lw[:, ::-1]]), jnp.concatenate([seg, jnp.array([[1] * 8])]), "example")
  np.testing.assert_allclose(two.sum(axis=1), [2 / 3, 1 / 3], rtol=1e-6)
  with pytest.raises(ValueError, match="unknown loss normalization 'sequence'"):
    loss.token_weights(lw, seg, "sequence")


def test_token_nll_matches_the_full_log_softmax():
  hidden, unembed, targets, _ = _inputs()
  targets = targets.at[0, :3].set(jnp.argmax(hidden[0, :3] @ unembed, axis=-1))  # some targets greedy
  nll, greedy = loss.token_nll(hidden, unembed, targets, chunk_len=5, dtype="float32")
  log_probs = jax.nn.log_softmax(hidden @ unembed, axis=-1)
  expected = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(greedy, jnp.argmax(log_probs, axis=-1) == targets)
  assert greedy[0, :3].all() and not greedy.all()


def _fsdp_mesh():
  from flan_jax import sharding
  return sharding.make_mesh(dict(data=2, fsdp=4, tensor=1), jax.devices("cpu")[:8]), sharding.rules("fsdp")


def test_fused_loss_on_eight_devices_equals_one_device():
  """On a mesh the vocabulary is split across devices (loss.py); values and gradients do not change."""
  from jax.sharding import NamedSharding, PartitionSpec
  from flan_jax import sharding
  hidden, unembed, targets, weights = _inputs(b=8, length=24, d=16, vocab=64)
  fn = lambda h, u, t, w: loss.fused_cross_entropy(h, u, t, w, chunk_len=8, dtype="float32", z_loss=1e-3,
                                                   label_smoothing=0.1)
  value_and_grad = jax.value_and_grad(lambda *a: fn(*a)[0], argnums=(0, 1))
  expected = jax.jit(value_and_grad)(hidden, unembed, targets, weights)
  mesh, rules = _fsdp_mesh()
  rows = NamedSharding(mesh, PartitionSpec(sharding.BATCH_AXES))
  placed = (jax.device_put(hidden, rows), jax.device_put(unembed, NamedSharding(mesh, PartitionSpec("fsdp"))),
            jax.device_put(targets, rows), jax.device_put(weights, rows))
  with sharding.context(mesh, rules):
    compiled = jax.jit(value_and_grad).lower(*placed).compile()
  assert "all-reduce" in compiled.as_text()  # really split: the log-sum-exp is reduced across devices
  value, grads = compiled(*placed)
  np.testing.assert_allclose(value, expected[0], rtol=1e-5)
  for ours, reference in zip(grads, expected[1]):
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)


def test_fused_loss_memory_per_device_at_llama3_vocabulary_with_fsdp():
  """Vocabulary 128,256, d_model 2,048, 8 rows of 2,048 tokens on 8 devices (2 data x 4 fsdp): the
  compiled value-and-gradient's temporary memory per device is at most 1.3x one unembedding shard (the
  vocabulary split over fsdp) + its data replica's gradient carry shard + one chunk of logits (compiled,
  not run)."""
  from jax.sharding import NamedSharding, PartitionSpec
  from flan_jax import sharding
  rows, length, d, vocab, chunk = 8, 2048, 2048, 128_256, 128
  mesh, rules = _fsdp_mesh()
  by_row = NamedSharding(mesh, PartitionSpec(sharding.BATCH_AXES))
  args = (jax.ShapeDtypeStruct((rows, length, d), jnp.float32, sharding=by_row),
          jax.ShapeDtypeStruct((d, vocab), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("fsdp"))),
          jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=by_row),
          jax.ShapeDtypeStruct((rows, length), jnp.float32, sharding=by_row))
  fn = lambda h, u, t, w: loss.fused_cross_entropy(h, u, t, w, chunk_len=chunk, dtype="bfloat16")[0]
  with sharding.context(mesh, rules):
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)),
                       out_shardings=(None, (args[0].sharding, args[1].sharding))).lower(*args).compile()
  vocab_shard_bytes = d * vocab * 4 / 4  # split over the 4 fsdp devices, replicated over the 2 data replicas
  carry_bytes = d * vocab * 4 / 8  # a carry per data replica, split over fsdp
  logits_chunk_bytes = rows * chunk * vocab * 4 / 8
  assert compiled.memory_analysis().temp_size_in_bytes <= 1.3 * (vocab_shard_bytes + carry_bytes + logits_chunk_bytes)
