"""FLAN's template ablation: how many instruction templates each task is rendered through (held-out
NLI).

  python -m flan_jax.sweep --config configs/ablations/templates_per_task.py
"""

from configs.ablations import held_out_clusters


def get_config(arg=None):
  del arg
  return held_out_clusters.short_runs()


def get_sweep():
  return [{"data.template.max_templates": n} for n in (1, 2, 4, 0)]
