"""Scoring continuations: the log-likelihood of each of several continuations given a shared prompt,
the prompts packed with their continuations into rows (rank classification, a judge's verdict
labels, a classifier's yes/no)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from flan_jax import sharding
from flan_jax import loss as losses
from flan_jax.model import Decoder, train_flops_per_token

LENGTH_BUCKET = 64  # rows are padded to a multiple of this, so few shapes compile


def score_continuations(params, model: Decoder, requests, *, batch_size: int, seq_len: int, chunk_len: int, mesh):
  """Log-likelihoods of continuations given their prompt, each prompt run through the model once.

  `requests` are (prompt ids, [(continuation ids, loss weights), ...]), prompts of one token or more;
  the result is (scores, greedy): per request, each continuation's sum of weighted token
  log-probabilities, and whether each of its weighted tokens is the most likely one. A prompt
  is cut from the left so that it and its longest continuation fit in seq_len + 1 tokens.

  A request becomes one unit: all of its prompt but the last token (segment s), then each
  continuation led by that token (segments s + 1, s + 2, ...), each seeing the prompt as its context
  (Decoder's context_ids) but not the other continuations. Units are packed, longest first, several
  to a row, and scored batch_size rows at a time: one compiled shape. Rows are a multiple of
  LENGTH_BUCKET long, from the longest unit's to twice that: whichever costs the fewest model FLOPs
  over all batches, padding included (train_flops_per_token as the measure). Only the continuations'
  hidden states go through the vocabulary projection (gathered into `scored_columns`): the prompts,
  most of a row, skip it."""
  if any(len(prompt) == 0 for prompt, _ in requests):
    raise ValueError("every scored prompt needs at least one token")
  units = []  # per request: (its prompt but the last token, [(continuation inputs, targets, weights)])
  for prompt, continuations in requests:
    prompt = list(prompt)[-max(1, seq_len + 1 - max(len(c) for c, _ in continuations)):]
    units.append((prompt[:-1], [([prompt[-1], *c[:-1]], c, w) for c, w in continuations]))
  lengths = [len(context) + sum(len(c) for c, _, _ in continuations) for context, continuations in units]
  shortest = -(-max(lengths) // LENGTH_BUCKET) * LENGTH_BUCKET
  packings = {n: _first_fit_decreasing(lengths, n) for n in range(shortest, 2 * shortest + 1, LENGTH_BUCKET)}

  def padded_flops(row_len):  # of all batches, padding rows included: longer rows pack better, attend longer
    rows = -(-len(packings[row_len]) // batch_size) * batch_size
    return rows * row_len * train_flops_per_token(model.cfg, row_len)
  row_len = min(packings, key=padded_flops)
  rows = packings[row_len]
  scored = [sum(lengths[i] - len(units[i][0]) for i in members) for members in rows]
  scored_len = -(-max(scored) // 16) * 16  # a few tokens of options a row: a finer bucket
  scores = [np.zeros(len(continuations)) for _, continuations in requests]
  greedy = [np.ones(len(continuations), bool) for _, continuations in requests]
  for start in range(0, len(rows), batch_size):
    batch = {k: np.zeros((batch_size, row_len), np.int32)
             for k in ("inputs", "positions", "segment_ids", "context_ids")}
    batch |= {k: np.zeros((batch_size, scored_len), np.float32 if k == "loss_weights" else np.int32)
              for k in ("scored_columns", "targets", "loss_weights")}
    spans = []  # (request, continuation, row, first scored column, end)
    for row, members in enumerate(rows[start:start + batch_size]):
      column, scored_column, segment = 0, 0, 0
      for i in members:
        context, continuations = units[i]
        segment += 1
        end = column + len(context)
        batch["inputs"][row, column:end], batch["positions"][row, column:end] = context, np.arange(len(context))
        batch["segment_ids"][row, column:end] = segment
        column = end
        for j, (tokens, targets, weights) in enumerate(continuations):
          end, scored_end = column + len(tokens), scored_column + len(tokens)
          batch["inputs"][row, column:end] = tokens
          batch["positions"][row, column:end] = len(context) + np.arange(len(tokens))
          batch["segment_ids"][row, column:end], batch["context_ids"][row, column:end] = segment + 1 + j, segment
          batch["scored_columns"][row, scored_column:scored_end] = np.arange(column, end)
          batch["targets"][row, scored_column:scored_end] = targets
          batch["loss_weights"][row, scored_column:scored_end] = weights
          spans.append((i, j, row, scored_column, scored_end))
          column, scored_column = end, scored_end
        segment += len(continuations)
    batch = {k: jax.make_array_from_callback(v.shape, sharding.batch_sharding(mesh), lambda index, v=v: v[index])
             for k, v in batch.items()}  # every process builds the same batch; its devices get their rows
    token_scores, token_greedy = multihost_utils.process_allgather(
        token_log_likelihoods(params, batch, model=model, chunk_len=chunk_len), tiled=True)
    for i, j, row, begin, end in spans:
      scores[i][j] = token_scores[row, begin:end].sum()
      greedy[i][j] = token_greedy[row, begin:end].all()
  return scores, greedy


def _first_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
  """Indices of `lengths` in rows whose lengths sum to at most `capacity`: longest first, each into
  the first row with room."""
  rows, room = [], []
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
    if row is None:
      rows.append([]), room.append(capacity)
      row = len(rows) - 1
    rows[row].append(i)
    room[row] -= lengths[i]
  return rows


@functools.partial(jax.jit, static_argnames=("model", "chunk_len"))
def token_log_likelihoods(params, batch, *, model: Decoder, chunk_len: int):
  """([b, k], [b, k]): the log-probability of each target token, times its loss weight, after the
  hidden state at its `scored_columns` [b, k] of the [b, l] rows; and whether the target is the
  most likely token there (True where its weight is 0)."""
  hidden = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                       context_ids=batch["context_ids"])
  hidden = jnp.take_along_axis(hidden, batch["scored_columns"][:, :, None], axis=1)
  unembedding = model.apply({"params": params}, method=Decoder.unembedding)
  nll, greedy = losses.token_nll(hidden, unembedding, batch["targets"], chunk_len=chunk_len,
                                 dtype=model.cfg.dtype)
  return -nll * batch["loss_weights"], greedy | (batch["loss_weights"] == 0)
