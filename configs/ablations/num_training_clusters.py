"""FLAN's Figure 6: held-out NLI fixed, training clusters added one at a time in a fixed order.

  python -m flan_jax.sweep --config configs/ablations/num_training_clusters.py
"""

from configs.ablations import held_out_clusters
from flan_jax.data.sources import flan_mini

HELD_OUT = "nli"
# Paraphrase is excluded with NLI held out (FLAN's mutual exclusion), so it never trains here.
ORDER = ("sentiment", "summarization", "translation", "closed_book_qa", "struct_to_text", "commonsense",
         "coreference", "reading_comprehension", "misc")


def get_config(arg=None):
  del arg
  config = held_out_clusters.short_runs()
  config.data.held_out_clusters = (HELD_OUT,)
  config.data.tokenizer.mixture = ("flan_mini",)  # one tokenizer (without NLI) for every run, not one per mixture
  return config


def tasks_of(clusters):
  return tuple(name for name, (cluster, *_) in flan_mini.TASKS.items() if cluster in clusters)


def get_sweep():
  return [{"name": f"clusters={k}", "data.mixture": tasks_of(ORDER[:k] + (HELD_OUT,))} for k in (1, 2, 4, 7, 9)]
