"""The run's tokenizer: the configured file (data.tokenizer.model), or a SentencePiece model trained
on the run's tasks rendered through all their templates and cached under a key of what it is a
function of (tokenizer_spec), so that runs and sweeps that would train the same one share it.
"""

import copy
from collections.abc import Sequence

import numpy as np

from flan_jax.data import mixture, pipeline, tasks, templates
from flan_jax.data import tokenizer as tokenizer_lib
from flan_jax.data.render import Renderer, Stats
from flan_jax.data.tokenizer import Tokenizer


def tokenizer_tasks(data_cfg) -> list[tasks.Task]:
  """The tasks whose training splits train the tokenizer: data.tokenizer.mixture (empty: the run's
  mixture and local tasks) less data.tokenizer.held_out_clusters and the clusters FLAN excludes
  with them. Neither depends on a run's own choices unless set to, so one sweep can share one
  tokenizer."""
  cfg = data_cfg.tokenizer
  run_names = pipeline.task_names(data_cfg)[
      0]  # also registers the local tasks data.tokenizer.mixture may name
  names = list(cfg.mixture) or run_names
  held_out = data_cfg.held_out_clusters if cfg.held_out_clusters is None else cfg.held_out_clusters
  excluded = tasks.excluded_clusters(list(held_out))
  chosen = [t for t in mixture.leaf_tasks(names) if t.cluster not in excluded]
  if not chosen:
    raise ValueError(
        f"data.tokenizer.held_out_clusters={tuple(held_out)} leaves no task of {names} "
        "to train the tokenizer on")
  return chosen


def tokenizer_spec(data_cfg) -> dict:
  """What a trained tokenizer is a function of (its cache key)."""
  cfg = data_cfg.tokenizer
  return {
      "tasks": [t.name for t in tokenizer_tasks(data_cfg)],
      "vocab_size": cfg.vocab_size,
      "num_texts": cfg.num_texts,
      "formats": sorted(dict(data_cfg.template.format_mix) or [data_cfg.template.format]),
      "version": 2
  }


def tokenizer_texts(data_cfg, corpus: Sequence[tasks.Task], count: int) -> list[str]:
  """Training-split text of the corpus tasks through all their instruction templates, zero-shot, in
  the run's output formats: the same whatever a sweep varies of the templates."""
  cfg = copy.deepcopy(data_cfg)
  cfg.template.update(
      dict(style="instructions", max_templates=0, inverted=True, preamble_rate=0.0,
           omit_input_rate=0.0))
  cfg.template.prompt_mix = {"zero_shot": 1.0}  # (update() would merge into the run's mix)
  renderer = Renderer(cfg, None, corpus, Stats())
  rng = np.random.default_rng(0)
  texts = []
  for task in corpus:
    records = task.source(task.splits[0])
    for i in rng.choice(len(records), size=min(max(1, count // len(corpus)), len(records)),
                        replace=False):
      rendered = renderer.render((task.name, int(i), records[int(i)]), rng)
      if rendered is not None:
        texts.append(templates.to_text(*rendered, eos=""))
  return texts


def get_tokenizer(data_cfg, cache_dir: str) -> Tokenizer:
  """The configured tokenizer file, or one trained on tokenizer_tasks() and cached in
  `cache_dir`."""
  cfg = data_cfg.tokenizer
  if cfg.model:
    # Runs from before the key existed rendered with the same fixed date.
    date = cfg.get("chat_template_date", templates.CHAT_TEMPLATE_DATE)
    return tokenizer_lib.load(cfg.model, pad_id=cfg.pad_id, eos_id=cfg.eos_id, bos_id=cfg.bos_id,
                              chat_template_date=date)
  spec = tokenizer_spec(data_cfg)
  path = tokenizer_lib.cache_path(cache_dir, spec)
  try:
    return tokenizer_lib.load(path)
  except FileNotFoundError:
    corpus = tokenizer_tasks(data_cfg)
    return tokenizer_lib.train(tokenizer_texts(data_cfg, corpus, cfg.num_texts), path,
                               vocab_size=cfg.vocab_size)
