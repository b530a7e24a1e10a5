"""Packing variable-length examples into fixed-length rows.

An example of n+1 tokens becomes n (input, target) pairs: targets are shifted
inside the example, so no target ever crosses into the next example of a row.
A packed row holds:
  inputs, targets  int32 [seq_len]  token ids, 0 where padded
  loss_weights     int32 [seq_len]  1 on response tokens (targets) only
  segment_ids      int32 [seq_len]  1, 2, ... per example in the row, 0 on padding
  positions        int32 [seq_len]  0, 1, ... restarting at every example
A row holds at most MAX_SEGMENTS runs of equal segment ids, its padding counted as one (the bound of
cuDNN's packed attention layout, which takes a row's runs as offsets and lengths; MaxText's too).
"""

import grain
import numpy as np
from grain import experimental as grain_experimental

TRUNCATION_POLICIES = ("prompt_left", "right")
PACKERS = {"best_fit": grain_experimental.BestFitPackIterDataset,
           "first_fit": grain_experimental.FirstFitPackIterDataset}
FEATURES = ("inputs", "targets", "loss_weights")
BATCH_KEYS = FEATURES + ("segment_ids", "positions")  # what a packed batch holds
MAX_SEGMENTS = 32


def truncate(tokens: np.ndarray, weights: np.ndarray, max_tokens: int, policy: str):
  """Shortens an example to `max_tokens`; returns (tokens, weights, was_truncated).

  prompt_left: drop prompt tokens just after BOS, keeping the whole response
    (if the response alone is too long, its end is cut);
  right: cut the end.
  """
  if policy not in TRUNCATION_POLICIES:
    raise ValueError(f"unknown truncation policy {policy!r}; policies are {TRUNCATION_POLICIES}")
  excess = len(tokens) - max_tokens
  if excess <= 0:
    return tokens, weights, False
  if policy == "prompt_left":
    first_response = int(np.argmax(weights > 0)) if weights.any() else len(tokens)
    drop = min(excess, max(first_response - 1, 0))  # prompt tokens after BOS
    tokens = np.concatenate([tokens[:1], tokens[1 + drop:]])
    weights = np.concatenate([weights[:1], weights[1 + drop:]])
  return tokens[:max_tokens], weights[:max_tokens], True


def example_features(tokens: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
  return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_weights": weights[1:]}


def pack(examples: grain.IterDataset, seq_len: int, *, packer: str, num_bins: int, seed: int) -> grain.IterDataset:
  """Packs example features (see `example_features`) into rows of `seq_len`."""
  if packer not in PACKERS:
    raise ValueError(f"unknown packer {packer!r}; packers are {sorted(PACKERS)}")
  packed = PACKERS[packer](examples, length_struct={k: seq_len for k in FEATURES},
                           num_packing_bins=num_bins, seed=seed, shuffle_bins=True,
                           max_sequences_per_bin=MAX_SEGMENTS - 1)
  return packed.map(_row)


def _row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  row = {k: packed[k] for k in FEATURES}
  row["segment_ids"] = packed["inputs_segment_ids"]
  row["positions"] = packed["inputs_positions"]
  return row


def efficiency(segment_ids: np.ndarray) -> float:
  """Non-padding tokens over all tokens."""
  return float((segment_ids > 0).mean())
