"""Direct Preference Optimization (Rafailov et al. 2023) over packed batches of preference pairs.

A batch of pairs (packing.pack with pairs=True) holds in each row up to MAX_PAIRS pairs, the k-th
pair's chosen sequence as segment 2k - 1 and its rejected one as segment 2k, `preference` 1 and 2
on them, and `loss_weights` on each final answer. A sequence's log-probability is the sum of its
answer tokens' log-probabilities; with `length_normalize`, their mean (open-instruct's `dpo_norm`).

For a pair, with policy and reference log-probabilities pi_c, pi_r, ref_c, ref_r:
  h = (pi_c - ref_c) - (pi_r - ref_r)
  sigmoid (DPO):  -log sigmoid(beta h)
  ipo (Azar et al. 2023):  (h - 1 / (2 beta))^2
The batch loss is the mean over its pairs, plus `sft_weight` times the chosen answers' mean token
negative log-likelihood. Rewards are beta (pi - ref) per sequence.
"""

import jax
import jax.numpy as jnp

from flan_jax.data.packing import MAX_PAIRS, MAX_SEGMENTS

VARIANTS = ("sigmoid", "ipo")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "kl")


def sequence_log_probs(token_log_probs, batch):
  """(chosen, rejected, chosen tokens, rejected tokens), each [b, MAX_PAIRS]: per pair slot of each
  row, its sequences' summed answer-token log-probabilities and answer-token counts (0 where a row
  has fewer pairs)."""
  b = token_log_probs.shape[0]
  ids = batch["segment_ids"] + jnp.arange(b)[:, None] * MAX_SEGMENTS
  weights = batch["loss_weights"].astype(jnp.float32)

  def per_segment(values):
    sums = jax.ops.segment_sum(values.reshape(-1), ids.reshape(-1), num_segments=b * MAX_SEGMENTS)
    sums = sums.reshape(b, MAX_SEGMENTS)
    return sums[:, 1:2 * MAX_PAIRS:2], sums[:, 2:2 * MAX_PAIRS + 1:2]

  chosen, rejected = per_segment(weights * token_log_probs)
  chosen_tokens, rejected_tokens = per_segment(weights)
  return chosen, rejected, chosen_tokens, rejected_tokens


def totals(batch) -> dict:
  """What a batch's loss is normalised by: its pairs (those whose both answers have weighted
  tokens) and their chosen answers' tokens."""
  _, _, chosen_tokens, rejected_tokens = sequence_log_probs(jnp.zeros(batch["targets"].shape),
                                                            batch)
  valid = (chosen_tokens > 0) & (rejected_tokens > 0)
  return {"pairs": jnp.sum(valid), "chosen_tokens": jnp.sum(jnp.where(valid, chosen_tokens, 0.0))}


def loss(policy, reference, batch, batch_totals, *, beta: float, variant: str,
         length_normalize: bool, sft_weight: float):
  """(loss, metric sums) of a batch, or of a microbatch of a batch whose `totals` are
  `batch_totals`: summed over microbatches, both are the whole batch's. `policy` and `reference`
  are per-token log-probabilities [b, l] of the targets (reference without gradient). Metric sums:
  each of METRICS summed over pairs (divide by pairs) and "nll", the chosen answers' negative
  log-likelihood summed over their tokens."""
  if variant not in VARIANTS:
    raise ValueError(f"loss.dpo_variant={variant!r}: choose from {', '.join(VARIANTS)}")
  pi_c, pi_r, tokens_c, tokens_r = sequence_log_probs(policy, batch)
  ref_c, ref_r, _, _ = sequence_log_probs(jax.lax.stop_gradient(reference), batch)
  valid = (tokens_c > 0) & (tokens_r > 0)
  if length_normalize:
    pi_c, ref_c = pi_c / jnp.maximum(tokens_c, 1), ref_c / jnp.maximum(tokens_c, 1)
    pi_r, ref_r = pi_r / jnp.maximum(tokens_r, 1), ref_r / jnp.maximum(tokens_r, 1)
  h = (pi_c - ref_c) - (pi_r - ref_r)
  per_pair = -jax.nn.log_sigmoid(beta * h) if variant == "sigmoid" else (h - 1 / (2 * beta))**2
  total = jnp.sum(jnp.where(valid, per_pair, 0.0)) / jnp.maximum(batch_totals["pairs"], 1)
  chosen_weights = batch["loss_weights"] * (batch["preference"] == 1)
  nll = -jnp.sum(chosen_weights * policy)
  if sft_weight:
    total = total + sft_weight * nll / jnp.maximum(batch_totals["chosen_tokens"], 1)
  reward_c, reward_r = beta * (pi_c - ref_c), beta * (pi_r - ref_r)
  where = lambda x: jnp.sum(jnp.where(valid, x, 0.0))
  sums = {
      "rewards/chosen": where(reward_c),
      "rewards/rejected": where(reward_r),
      "rewards/accuracy": where((reward_c > reward_r).astype(jnp.float32)),
      "rewards/margin": where(reward_c - reward_r),
      "kl": where((pi_c - ref_c) + (pi_r - ref_r)) / 2,
      "nll": nll,
  }
  return total, sums
