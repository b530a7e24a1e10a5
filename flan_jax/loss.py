"""Masked cross-entropy fused with the vocabulary projection, chunk by chunk.

The sequence is split into chunks of positions; for each chunk the logits are
computed, reduced to the loss, and dropped, so `[batch, length, vocab]` never
exists. Under differentiation the same pass also computes the chunk's gradient
with respect to its logits and turns it straight into gradients for the hidden
states and the unembedding (a custom VJP). The backward pass then only scales
them: three matmuls per chunk, as many as the naive loss, and no logits kept or
recomputed.

On a mesh the vocabulary is what is split, over the fsdp and tensor axes (VOCAB_AXES): each
device multiplies a chunk of its data replica's rows (gathered over fsdp: [batch / data, chunk,
d_model], small) by its own columns of the unembedding, so the logits, their gradient and the
`[d_model, vocab]` gradient carry are 1/(fsdp x tensor) per device, and the log-sum-exp needs only a
per-token all-reduce. Batch-split logits would instead need the whole unembedding and a whole-size
gradient carry on every device (about 1 GB in f32 for Llama 3's 128k vocabulary at d_model 2,048).
Rows stay split over `data`, the axis that spans slices (DCN) on multi-slice meshes: no hidden state
crosses it, and each data replica accumulates its own unembedding gradient (a leading `data` axis
on the carry), summed once after the last chunk.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from flan_jax.model import matmul
from flan_jax.sharding import BATCH_AXES

NORMALIZATIONS = ("token", "example", "constant")


def token_weights(loss_weights, segment_ids, normalization: str, constant: float = 1.0):
  """Per-token weights whose weighted sum of token losses is the batch loss.

  token: every target token counts equally (mean over target tokens);
  example: every packed example counts equally (mean over its tokens, then over examples);
  constant: sum over target tokens divided by `constant`.
  """
  w = loss_weights.astype(jnp.float32)
  if normalization == "token":
    return w / jnp.maximum(w.sum(), 1.0)
  if normalization == "example":
    # An example is a (row, segment id) pair; a row of length l holds fewer than l segments.
    b, length = segment_ids.shape
    example_ids = segment_ids + jnp.arange(b)[:, None] * length
    counts = jax.ops.segment_sum(w.reshape(-1), example_ids.reshape(-1), num_segments=b * length)
    tokens_in_example = counts[example_ids]
    per_token = jnp.where(w > 0, w / jnp.maximum(tokens_in_example, 1.0), 0.0)
    num_examples = per_token.sum()  # each example's weights sum to 1
    return per_token / jnp.maximum(num_examples, 1.0)
  if normalization == "constant":
    return w / constant
  raise ValueError(f"unknown loss normalization {normalization!r}; choose from {NORMALIZATIONS}")


def _target_logit(logits, targets):
  """logits[..., targets] as a comparison with the vocabulary index: elementwise, so it stays on
  whichever device holds that vocabulary column (a gather would not)."""
  vocab_index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.sum(jnp.where(vocab_index == targets[..., None], logits, 0.0), axis=-1)


def _token_losses(logits, targets, z_loss: float, label_smoothing: float):
  """Per-token (loss, negative log-likelihood, log-sum-exp) from f32 logits [..., vocab]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - _target_logit(logits, targets)
  loss = nll
  if label_smoothing:
    loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - logits.mean(axis=-1))
  if z_loss:
    loss = loss + z_loss * lse ** 2
  return loss, nll, lse


def _logits_grad(logits, lse, targets, weights, z_loss: float, label_smoothing: float):
  """d sum(weights * loss) / d logits = w * (softmax * (1 + 2 z lse) - (1 - s) [v == target] - s / vocab)."""
  vocab = logits.shape[-1]
  probs = jnp.exp(logits - lse[..., None])
  grad = probs * (1.0 + 2.0 * z_loss * lse)[..., None] - label_smoothing / vocab
  vocab_index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  grad = jnp.where(vocab_index == targets[..., None], grad - (1.0 - label_smoothing), grad)
  return weights[..., None] * grad


VOCAB_AXES = ("fsdp", "tensor")  # the mesh axes the vocabulary is split over


def _mesh():
  """The mesh in context (sharding.context); None outside one, or on a single device."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or mesh.size == 1 else mesh


def _place(x, *spec):
  """x constrained to PartitionSpec(*spec); a no-op outside a mesh of several devices."""
  return x if _mesh() is None else jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def _data_replicas() -> int:
  mesh = _mesh()
  return mesh.shape["data"] if mesh is not None and "data" in mesh.axis_names else 1


def fused_cross_entropy(hidden, unembedding, targets, weights, *, chunk_len: int, dtype: str,
                        z_loss: float = 0.0, label_smoothing: float = 0.0):
  """sum(weights * loss) and sum(weights * nll) over all tokens, logits built one chunk at a time.

  hidden [b, l, d] (f32), unembedding [d, vocab], targets and weights [b, l].
  A chunk is `chunk_len` positions of every row, so rows stay where the batch
  sharding put them and each device works on its own rows. Gradients flow
  through the loss sum; the nll sum is a metric and carries none.
  """
  return _fused(chunk_len, dtype, z_loss, label_smoothing, hidden, unembedding, targets, weights)


def _chunked_pass(chunk_len, dtype, z_loss, label_smoothing, hidden, unembedding, targets, weights, with_grads):
  """(loss sum, nll sum), and with_grads also (d loss/d hidden, d loss/d unembedding)."""
  replicas = _data_replicas()

  def step(carry, xs):
    loss_sum, nll_sum, d_unembedding = carry
    h, t, w = (_place(x, "data") for x in xs)  # the chunk's rows of this data replica, on each of its devices
    logits = _place(matmul("bcd,dv->bcv", h, unembedding, dtype), "data", None, VOCAB_AXES)
    loss, nll, lse = _token_losses(logits, t, z_loss, label_smoothing)
    carry = (loss_sum + jnp.sum(w * loss), nll_sum + jnp.sum(w * nll), d_unembedding)
    if not with_grads:
      return carry, None
    d_logits = _logits_grad(logits, lse, t, w, z_loss, label_smoothing)
    d_h = _place(matmul("bcv,dv->bcd", d_logits, unembedding, dtype), BATCH_AXES)
    by_replica = lambda x: x.reshape(replicas, -1, *x.shape[1:])  # [data, b / data, chunk, ...]
    d_unembedding = _place(d_unembedding + matmul("nbcd,nbcv->ndv", by_replica(h), by_replica(d_logits), dtype),
                           "data", None, VOCAB_AXES)
    return carry[:2] + (d_unembedding,), d_h

  unembedding = _place(unembedding, None, VOCAB_AXES)
  zeros = None
  if with_grads:
    zeros = _place(jnp.zeros((replicas, *unembedding.shape), jnp.float32), "data", None, VOCAB_AXES)
  xs = [_to_chunks(x, chunk_len) for x in (hidden, targets, weights.astype(jnp.float32))]
  (loss, nll, d_unembedding), d_hidden = jax.lax.scan(step, (jnp.float32(0.0), jnp.float32(0.0), zeros), xs)
  if not with_grads:
    return (loss, nll), None
  return (loss, nll), (_from_chunks(d_hidden, hidden.shape[1]), d_unembedding.sum(axis=0))


def _to_chunks(x, chunk_len: int):
  """[b, l, ...] -> [num_chunks, b, chunk_len, ...], the length padded up to whole chunks (one chunk of
  length l where l < chunk_len: padding would only add logits to compute)."""
  b, length = x.shape[:2]
  chunk_len = min(chunk_len, length)
  num_chunks = -(-length // chunk_len)
  x = jnp.pad(x, [(0, 0), (0, num_chunks * chunk_len - length)] + [(0, 0)] * (x.ndim - 2))
  return jnp.swapaxes(x.reshape(b, num_chunks, chunk_len, *x.shape[2:]), 0, 1)


def _from_chunks(x, length: int):
  """The inverse of _to_chunks."""
  num_chunks, b, chunk_len = x.shape[:3]
  return jnp.swapaxes(x, 0, 1).reshape(b, num_chunks * chunk_len, *x.shape[3:])[:, :length]


def token_nll(hidden, unembedding, targets, *, chunk_len: int, dtype: str):
  """(per-token negative log-likelihood [b, l] of `targets`, whether each target is the argmax
  [b, l]), logits built one chunk at a time (for scoring)."""
  def step(_, xs):
    h, t = xs
    logits = matmul("bcd,dv->bcv", h, unembedding, dtype)
    greedy = _target_logit(logits, t) >= jnp.max(logits, axis=-1)
    return None, (_token_losses(logits, t, 0.0, 0.0)[1], greedy)
  _, (nll, greedy) = jax.lax.scan(step, None, (_to_chunks(hidden, chunk_len), _to_chunks(targets, chunk_len)))
  return _from_chunks(nll, hidden.shape[1]), _from_chunks(greedy, hidden.shape[1])


def fused_token_nll(hidden, unembedding, targets, *, chunk_len: int, dtype: str):
  """Per-token negative log-likelihood [b, l] of `targets`, differentiable with the fused loss's
  memory: its gradient for cotangent g is fused_cross_entropy's with weights g, logits rebuilt one
  chunk at a time (for losses of per-sequence log-probabilities, such as DPO's)."""
  return _fused_nll(chunk_len, dtype, hidden, unembedding, targets)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_nll(chunk_len, dtype, hidden, unembedding, targets):
  return token_nll(hidden, unembedding, targets, chunk_len=chunk_len, dtype=dtype)[0]


def _fused_nll_fwd(chunk_len, dtype, hidden, unembedding, targets):
  return _fused_nll(chunk_len, dtype, hidden, unembedding, targets), (hidden, unembedding, targets)


def _fused_nll_bwd(chunk_len, dtype, residuals, g):
  hidden, unembedding, targets = residuals
  _, (d_hidden, d_unembedding) = _chunked_pass(chunk_len, dtype, 0.0, 0.0, hidden, unembedding, targets, g,
                                               True)
  return d_hidden.astype(hidden.dtype), d_unembedding.astype(unembedding.dtype), None


_fused_nll.defvjp(_fused_nll_fwd, _fused_nll_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused(chunk_len, dtype, z_loss, label_smoothing, hidden, unembedding, targets, weights):
  return _chunked_pass(chunk_len, dtype, z_loss, label_smoothing, hidden, unembedding, targets, weights, False)[0]


def _fused_fwd(chunk_len, dtype, z_loss, label_smoothing, hidden, unembedding, targets, weights):
  sums, (d_hidden, d_unembedding) = _chunked_pass(chunk_len, dtype, z_loss, label_smoothing, hidden, unembedding,
                                                  targets, weights, True)
  return sums, (d_hidden.astype(hidden.dtype), d_unembedding.astype(unembedding.dtype))


def _fused_bwd(chunk_len, dtype, z_loss, label_smoothing, grads, cotangents):
  d_hidden, d_unembedding = grads
  g = cotangents[0]  # the nll sum's cotangent is ignored: it is a metric
  # targets and weights are data: no gradient
  return (g * d_hidden).astype(d_hidden.dtype), (g * d_unembedding).astype(d_unembedding.dtype), None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def naive_cross_entropy(hidden, unembedding, targets, weights, *, dtype: str, z_loss: float = 0.0,
                        label_smoothing: float = 0.0):
  """The same sums with the full [b, l, vocab] logits: the reference and the benchmark baseline."""
  logits = matmul("bld,dv->blv", hidden, unembedding, dtype)
  vocab = logits.shape[-1]
  loss, nll, _ = _token_losses(logits.reshape(-1, vocab), targets.reshape(-1), z_loss, label_smoothing)
  w = weights.reshape(-1).astype(jnp.float32)
  return jnp.sum(w * loss), jnp.sum(w * nll)
