"""FLAN 2021's protocol: one run per held-out cluster, trained on the rest (short runs of the tiny
setup).

  python -m flan_jax.sweep --config configs/ablations/held_out_clusters.py
"""

from configs import tiny
from flan_jax.data.sources import flan_mini


def short_runs():
  """The tiny setup in short runs: the base of every ablation here."""
  config = tiny.get_config()
  config.train.steps = 80
  config.train.checkpoint_every = 80
  config.optim.warmup_steps = 10
  config.evals.seen.every_steps = -1
  config.evals.held_out.max_examples = 30
  return config


def get_config(arg=None):
  del arg
  config = short_runs()
  # One tokenizer for every run: trained on every cluster's training split (never an evaluation split).
  # A tokenizer without each run's held-out cluster would differ per run, confounding the comparison.
  config.data.tokenizer.held_out_clusters = ()
  return config


def get_sweep():
  clusters = sorted({cluster for cluster, *_ in flan_mini.TASKS.values()})
  return [{"data.held_out_clusters": (cluster,)} for cluster in clusters]
