"""Mixtures: examples-proportional rates with a per-task cap and a temperature.

A mixture is a named list of components (task or mixture names). A task's rate
is min(examples, cap) ** (1 / temperature); a nested mixture contributes its
tasks with their own rates, scaled to the mixture's weight when one is given.
Explicit weights (config `data.weights`, keyed by task or mixture name) replace
the computed rate. Held-out clusters, and the clusters FLAN excludes with them,
are removed from training; their tasks form the zero-shot evaluation set.
"""

import zlib
from collections.abc import Sequence

import numpy as np

from flan_jax.data import tasks

_MIXTURES: dict[str, tuple[str, ...]] = {}


def register(name: str, components: Sequence[str]) -> None:
  if name in tasks.names():
    raise ValueError(f"mixture {name!r} has the name of a task")
  if name in _MIXTURES and _MIXTURES[name] != tuple(components):
    raise ValueError(f"mixture {name!r} is already registered with other components")
  _MIXTURES[name] = tuple(components)


def leaf_tasks(names: Sequence[str]) -> list[tasks.Task]:
  """All tasks under these task or mixture names, in order, each once."""
  out = {}
  for name in names:
    for task in (leaf_tasks(_MIXTURES[name]) if name in _MIXTURES else [tasks.get(name)]):
      out.setdefault(task.name, task)
  return list(out.values())


def capped(task: tasks.Task, limit: int) -> np.ndarray:
  """The training indices a task may contribute, ascending: all of them, or with `limit` > 0 (FLAN's
  at most 30k examples per dataset, data.max_examples_per_task) that many drawn at random, the draw a
  function of the task's name only, so that every run and process of a mixture takes the same."""
  size = len(task.source(task.splits[0]))
  if not limit or size <= limit:
    return np.arange(size)
  rng = np.random.default_rng(zlib.crc32(task.name.encode()))
  return np.sort(rng.choice(size, size=limit, replace=False))


def rates(names: Sequence[str], *, sizes: dict[str, int], cap: int, temperature: float,
          weights: dict[str, float]) -> dict[str, float]:
  """Sampling rate of every leaf task (not normalised)."""
  _check_weights(names, weights)

  def component(name) -> dict[str, float]:
    if name not in _MIXTURES:
      if name in weights:
        return {name: float(weights[name])}
      n = min(sizes[name], cap) if cap else sizes[name]
      return {name: float(n) ** (1.0 / temperature)}
    inner = {}
    for child in _MIXTURES[name]:
      for task, rate in component(child).items():
        inner[task] = inner.get(task, 0.0) + rate
    if name in weights:
      total = sum(inner.values())
      inner = {t: weights[name] * r / total for t, r in inner.items()}
    return inner

  out = {}
  for name in names:
    for task, rate in component(name).items():
      out.setdefault(task, rate)
  return out


def _check_weights(names, weights):
  known = set(_MIXTURES) | set(tasks.names())
  unknown = sorted(set(weights) - known)
  if unknown:
    raise KeyError(f"data.weights names unknown task(s) or mixture(s): {unknown}")
  bad = {k: v for k, v in weights.items() if not v > 0}
  if bad:
    raise ValueError(f"data.weights must be positive: {bad}")


def split_by_held_out(names: Sequence[str], held_out_clusters: Sequence[str]):
  """(training tasks, zero-shot evaluation tasks) of a mixture for the given held-out clusters."""
  excluded = tasks.excluded_clusters(held_out_clusters)
  all_tasks = leaf_tasks(names)
  train = [t for t in all_tasks if t.cluster not in excluded]
  evaluation = [t for t in all_tasks if t.cluster in held_out_clusters]
  missing = [c for c in held_out_clusters if not any(t.cluster == c for t in all_tasks)]
  if missing:
    raise ValueError(f"held-out cluster(s) {missing} have no task in the mixture {list(names)}; its clusters are "
                     f"{sorted({t.cluster for t in all_tasks})}")
  if not train:
    raise ValueError(f"holding out {sorted(excluded)} leaves no training task in {list(names)}")
  return train, evaluation


def mixtures() -> dict[str, tuple[str, ...]]:
  return dict(_MIXTURES)
