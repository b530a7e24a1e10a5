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

Preference pairs (DPO) pack as one unit, so that both answers of a pair share a row (and a batch):
the chosen sequence is segment 2k - 1 and the rejected one segment 2k of the row's k-th pair, each
with positions from 0, and the row also holds
  preference       int32 [seq_len]  1 on the chosen sequence, 2 on the rejected one, 0 on padding
  reference_log_probs  float32 [seq_len]  with precomputed DPO reference log-probabilities
                   (dpo_reference.py), each answer's sum on its last weighted token; else 0
"""

import grain
import numpy as np
from grain import experimental as grain_experimental

TRUNCATION_POLICIES = ("prompt_left", "right")
PACKERS = {"best_fit": grain_experimental.BestFitPackIterDataset,
           "first_fit": grain_experimental.FirstFitPackIterDataset}
FEATURES = ("inputs", "targets", "loss_weights")
BATCH_KEYS = FEATURES + ("segment_ids", "positions")  # what a packed batch holds
PAIR_FEATURES = FEATURES + ("preference", "pair_positions", "reference_log_probs")
PAIR_BATCH_KEYS = BATCH_KEYS + ("preference", "reference_log_probs")  # a packed batch of pairs
MAX_SEGMENTS = 32
MAX_PAIRS = (MAX_SEGMENTS - 1) // 2  # pairs a row holds at most


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


def pair_features(chosen: tuple[np.ndarray, np.ndarray], rejected: tuple[np.ndarray, np.ndarray],
                  max_inputs: int) -> tuple[dict[str, np.ndarray], bool] | None:
  """(the features of a preference pair as one unit to pack, whether its prompt was cut), each
  answer given as (tokens, weights) of its whole conversation (the same prompt tokens, then the
  answer's). Where the two do not fit in `max_inputs` input positions, the same prompt tokens after
  the first are dropped from both, the answers kept whole; None if even that does not fit."""
  excess = len(chosen[0]) + len(rejected[0]) - 2 - max_inputs
  prompt = min(int(np.argmax(w > 0)) for _, w in (chosen, rejected))
  if excess > 2 * (prompt - 1):
    return None
  drop = max(-(-excess // 2), 0)
  parts = [example_features(np.concatenate([t[:1], t[1 + drop:]]), np.concatenate([w[:1], w[1 + drop:]]))
           for t, w in (chosen, rejected)]
  features = {k: np.concatenate([p[k] for p in parts]) for k in FEATURES}
  features["preference"] = np.concatenate([np.full(len(p["inputs"]), i + 1, np.int32)
                                           for i, p in enumerate(parts)])
  features["pair_positions"] = np.concatenate([np.arange(len(p["inputs"]), dtype=np.int32) for p in parts])
  features["reference_log_probs"] = np.zeros(len(features["inputs"]), np.float32)
  return features, drop > 0


def with_reference(features: dict[str, np.ndarray], chosen: float, rejected: float):
  """A pair's features (pair_features) carrying its answers' reference log-probability sums, each
  on its answer's last weighted token."""
  out = np.zeros(len(features["inputs"]), np.float32)
  for side, value in ((1, chosen), (2, rejected)):
    answer = (features["preference"] == side) & (features["loss_weights"] > 0)
    out[np.flatnonzero(answer)[-1]] = value
  return features | {"reference_log_probs": out}


def pack_in_order(pairs: list[dict[str, np.ndarray]], seq_len: int) -> list[tuple[dict, list[int]]]:
  """Rows of pairs (pair_features) in the order given, for one pass over them: a row is closed when
  the next pair does not fit or it holds MAX_PAIRS. [(row of PAIR_BATCH_KEYS, [indices of its pairs
  in `pairs`, by slot])]."""
  rows, members, used = [], [], 0

  def close():
    row = {k: np.zeros(seq_len, pairs[members[0]][k].dtype) for k in PAIR_FEATURES}
    row["inputs_segment_ids"] = np.zeros(seq_len, np.int32)
    at = 0
    for slot, i in enumerate(members):
      n = len(pairs[i]["inputs"])
      for k in PAIR_FEATURES:
        row[k][at:at + n] = pairs[i][k]
      row["inputs_segment_ids"][at:at + n] = slot + 1
      at += n
    rows.append((_pair_row(row), members))

  for i, pair in enumerate(pairs):
    n = len(pair["inputs"])
    if members and (used + n > seq_len or len(members) == MAX_PAIRS):
      close()
      members, used = [], 0
    members, used = members + [i], used + n
  if members:
    close()
  return rows


def pack(examples: grain.IterDataset, seq_len: int, *, packer: str, num_bins: int, seed: int,
         pairs: bool = False) -> grain.IterDataset:
  """Packs example features (see `example_features`), or with `pairs` preference pairs (see
  `pair_features`), into rows of `seq_len`."""
  if packer not in PACKERS:
    raise ValueError(f"unknown packer {packer!r}; packers are {sorted(PACKERS)}")
  features = PAIR_FEATURES if pairs else FEATURES
  packed = PACKERS[packer](examples, length_struct={k: seq_len for k in features},
                           num_packing_bins=num_bins, seed=seed, shuffle_bins=True,
                           max_sequences_per_bin=MAX_PAIRS if pairs else MAX_SEGMENTS - 1)
  return packed.map(_pair_row if pairs else _row)


def _row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  row = {k: packed[k] for k in FEATURES}
  row["segment_ids"] = packed["inputs_segment_ids"]
  row["positions"] = packed["inputs_positions"]
  return row


def _pair_row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  row = {k: packed[k] for k in FEATURES}
  pair, preference = packed["inputs_segment_ids"], packed["preference"]
  row["segment_ids"] = np.where(pair > 0, 2 * pair - 2 + preference, 0).astype(pair.dtype)
  row["positions"] = packed["pair_positions"]
  row["preference"] = preference
  row["reference_log_probs"] = packed["reference_log_probs"]
  return row


def efficiency(segment_ids: np.ndarray) -> float:
  """Non-padding tokens over all tokens."""
  return float((segment_ids > 0).mean())
