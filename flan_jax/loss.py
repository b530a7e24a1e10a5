"""Masked cross-entropy fused with the vocabulary projection, chunk by chunk.

The sequence is split into chunks of positions; for each chunk the logits are
computed, reduced to the loss, and dropped. The chunk body is rematerialised (`jax.checkpoint`),
so the backward pass recomputes one chunk's logits at a time instead of
keeping them: `[batch, length, vocab]` exists neither forward nor backward.
"""

import jax
import jax.numpy as jnp

from flan_jax.model import matmul

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


def _token_losses(logits, targets, z_loss: float, label_smoothing: float):
  """Per-token (loss, negative log-likelihood) from f32 logits [n, vocab]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  loss = nll
  if label_smoothing:
    loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - logits.mean(axis=-1))
  if z_loss:
    loss = loss + z_loss * lse ** 2
  return loss, nll


def fused_cross_entropy(hidden, unembedding, targets, weights, *, chunk_len: int, dtype: str,
                        z_loss: float = 0.0, label_smoothing: float = 0.0):
  """sum(weights * loss) and sum(weights * nll) over all tokens, logits built one chunk at a time.

  hidden [b, l, d] (f32), unembedding [d, vocab], targets and weights [b, l].
  A chunk is `chunk_len` positions of every row, so rows stay where the batch
  sharding put them and each device works on its own rows.
  """
  b, length, d = hidden.shape
  num_chunks = -(-length // chunk_len)
  pad = num_chunks * chunk_len - length

  def chunked(x):  # [b, l, ...] -> [num_chunks, b, chunk_len, ...]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.swapaxes(x.reshape(b, num_chunks, chunk_len, *x.shape[2:]), 0, 1)

  @jax.checkpoint
  def chunk(h_chunk, t_chunk, w_chunk):
    logits = matmul("bcd,dv->bcv", h_chunk, unembedding, dtype)
    loss, nll = _token_losses(logits.reshape(-1, logits.shape[-1]), t_chunk.reshape(-1), z_loss, label_smoothing)
    w_chunk = w_chunk.reshape(-1)
    return jnp.sum(w_chunk * loss), jnp.sum(w_chunk * nll)

  def step(totals, xs):
    loss, nll = chunk(*xs)
    return (totals[0] + loss, totals[1] + nll), None

  xs = (chunked(hidden), chunked(targets), chunked(weights.astype(jnp.float32)))
  (loss, nll), _ = jax.lax.scan(step, (jnp.float32(0.0), jnp.float32(0.0)), xs)
  return loss, nll


def naive_cross_entropy(hidden, unembedding, targets, weights, *, dtype: str, z_loss: float = 0.0,
                        label_smoothing: float = 0.0):
  """The same sums with the full [b, l, vocab] logits: the reference and the benchmark baseline."""
  logits = matmul("bld,dv->blv", hidden, unembedding, dtype)
  vocab = logits.shape[-1]
  loss, nll = _token_losses(logits.reshape(-1, vocab), targets.reshape(-1), z_loss, label_smoothing)
  w = weights.reshape(-1).astype(jnp.float32)
  return jnp.sum(w * loss), jnp.sum(w * nll)
