"""The optimiser: AdamW or Adafactor (FLAN's choice), a warmup-then-decay schedule, clipping.

Gradient accumulation over microbatches happens in the train step (train.py),
which hands the optimiser the gradient of the whole batch.
"""

import jax
import optax

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("constant", "cosine", "linear")
# Parameter names that weight decay skips: RMSNorm scales and biases (Qwen's query/key/value biases too).
NO_DECAY = ("scale", "bias", "bq", "bk", "bv")


def schedule(cfg, total_steps: int):
  """Linear warmup from 0 to `cfg.learning_rate`, then constant or a decay to lr * final_lr_fraction."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={cfg.schedule!r}: choose from {', '.join(SCHEDULES)}")
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max(total_steps - warmup, 1)
  after = {
      "constant": lambda: optax.constant_schedule(lr),
      "cosine": lambda: optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.final_lr_fraction),
      "linear": lambda: optax.linear_schedule(lr, lr * cfg.final_lr_fraction, decay_steps),
  }[cfg.schedule]()
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(params):
  """True for parameters that weight decay applies to: all but norm scales and biases."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key not in NO_DECAY, params)


def applied_updates(opt_state, default):
  """How many updates the optimiser has applied: its schedule's own count, which updates dropped by
  train.skip_nonfinite do not advance (the train step's count does); `default` without a schedule."""
  counts = [count for path, count in optax.tree_utils.tree_get_all_with_path(opt_state, "count")
            if getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState"]
  return counts[0] if counts else default


def make(cfg, total_steps: int):
  """(optax optimizer, learning-rate schedule) for config.optim."""
  lr = schedule(cfg, total_steps)
  if cfg.name == "adamw":
    core = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
  elif cfg.name == "adafactor":
    # Factored second moments, updates scaled by each parameter's RMS (as in T5 and FLAN).
    core = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask)
  else:
    raise ValueError(f"optim.name={cfg.name!r}: choose from {', '.join(OPTIMIZERS)}")
  if cfg.clip_norm:
    core = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
  return core, lr
