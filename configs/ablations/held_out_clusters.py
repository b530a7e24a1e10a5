# python -m flan_jax.sweep --config configs/ablations/held_out_clusters.py
"""FLAN 2021's protocol: one run per held-out cluster, trained on the rest (short runs of the tiny setup)."""

from configs import tiny
from flan_jax.data import flan_mini


def get_config(arg=None):
  del arg
  config = tiny.get_config()
  config.train.steps = 80
  config.train.checkpoint_every = 80
  config.optim.warmup_steps = 10
  config.eval.include_seen = False
  config.eval.max_examples = 30
  return config


def get_sweep():
  clusters = sorted({cluster for cluster, *_ in flan_mini.TASKS.values()})
  return [{"data.held_out_clusters": (cluster,)} for cluster in clusters]
