"""Low-rank adapters (LoRA): which parameters are adapters, and folding them into the base weights.

The model (model.py) adds `<weight>_lora_a` and `<weight>_lora_b` beside each
targeted projection when `model.lora_rank > 0`. Training then optimises the
adapters only: the train state's `params` hold the adapters and `frozen` the
base weights, which get no optimiser state and are not checkpointed (they come
back from `train.init_from`).
"""

import dataclasses
import math

import numpy as np
from flax import traverse_util

from flan_jax.model import Decoder, ModelConfig

_SUFFIXES = ("_lora_a", "_lora_b")


def is_adapter(path: tuple[str, ...]) -> bool:
  return path[-1].endswith(_SUFFIXES)


def split(params) -> tuple[dict, dict]:
  """(adapters, base) as two nested dicts of the same shape as `params`, each holding its own leaves."""
  flat = traverse_util.flatten_dict(params)
  adapters = {k: v for k, v in flat.items() if is_adapter(k)}
  base = {k: v for k, v in flat.items() if not is_adapter(k)}
  return traverse_util.unflatten_dict(adapters), traverse_util.unflatten_dict(base)


def combine(adapters, base) -> dict:
  """The inverse of split (either may be empty)."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(base), **traverse_util.flatten_dict(adapters)})


def without_adapters(model: Decoder) -> Decoder:
  """The model with its adapters switched off: it runs on the base parameters alone (split's
  second half), computing what the adapted model computes with zero adapters (DPO's reference)."""
  return Decoder(dataclasses.replace(model.cfg, lora_rank=0))


def merge(params, cfg: ModelConfig) -> dict:
  """Base parameters with every adapter folded in: W + (A B) alpha/rank, reshaped like W.
  On host (numpy) arrays: export gathers the parameters first."""
  flat = traverse_util.flatten_dict(params)
  merged = {k: v for k, v in flat.items() if not is_adapter(k)}
  scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0
  for path in [k for k in flat if k[-1].endswith("_lora_a")]:
    weight_path = (*path[:-1], path[-1][:-len("_lora_a")])
    a, b = flat[path], flat[(*path[:-1], weight_path[-1] + "_lora_b")]
    weight = merged[weight_path]
    lead = a.shape[:a.ndim + b.ndim - 2 - weight.ndim]  # the layers axis when layers are scanned
    a2 = np.asarray(a, np.float32).reshape(*lead, -1, cfg.lora_rank)
    b2 = np.asarray(b, np.float32).reshape(*lead, cfg.lora_rank, -1)
    delta = np.matmul(a2, b2) * scale
    merged[weight_path] = (np.asarray(weight, np.float32) + delta.reshape(weight.shape)).astype(weight.dtype)
  return traverse_util.unflatten_dict(merged)


def count(params) -> int:
  return sum(math.prod(v.shape) for v in traverse_util.flatten_dict(params).values())
