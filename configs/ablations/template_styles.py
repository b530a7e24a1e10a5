"""FLAN 2021's ablation of instructions (Sec. 4.3, Figure 8): train with natural-language templates,
with the dataset name and inputs only, or with the inputs alone; evaluate every run zero-shot on the
held-out NLI cluster through its instruction templates. FLAN's held-out mean: 55.2 with
instructions, 46.6 / 47.0 with dataset names (two evaluation variants), 37.3 with no template.

  python -m flan_jax.sweep --config configs/ablations/template_styles.py[:SEED]
"""

from configs.ablations import held_out_clusters
from flan_jax.data import templates


def get_config(arg=None):
  config = held_out_clusters.short_runs()  # the same short runs, NLI held out; one tokenizer for all three
  config.seed = int(arg or 0)  # `:SEED` after the path: repeat the sweep with other initialisations and data orders
  return config


def get_sweep():
  return [{"data.template.style": style} for style in templates.TEMPLATE_STYLES]
