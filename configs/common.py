"""Helpers shared by config files."""

import dataclasses

import ml_collections

from flan_jax.evaluators import ifeval as ifeval_lib
from flan_jax.evaluators import pairwise as pairwise_lib
from flan_jax.evaluators import preference as preference_lib
from flan_jax.evaluators import zero_shot as zero_shot_lib


def zero_shot(clusters: str, *, every_steps: int = 0, at_start: bool = False, **settings):
  """A config.evals entry of FLAN's zero-shot evaluation (flan_jax/evaluators/zero_shot.py) on the
  held-out or the seen clusters: its cadence (see flan_jax/evaluators/common.py) and every key of
  zero_shot.Settings, so that each can be set on the command line."""
  keys = dataclasses.asdict(zero_shot_lib.Settings(clusters=clusters, **settings))
  return ml_collections.ConfigDict(dict(type="zero_shot", every_steps=every_steps, at_start=at_start, **keys))


def pairwise(prompts: str, judge: str, *, every_steps: int = 0, at_start: bool = True, **settings):
  """A config.evals entry of a judged comparison (flan_jax/evaluators/pairwise.py): the model answers
  `prompts` and `judge` compares the answers with the baseline's (by default, with at_start, the
  starting model's). Its cadence and every key of pairwise.Settings."""
  keys = dataclasses.asdict(pairwise_lib.Settings(prompts=prompts, judge=judge, **settings))
  return ml_collections.ConfigDict(dict(type="pairwise", every_steps=every_steps, at_start=at_start, **keys))


def add_judged(config, arg: dict, config_name: str, **settings):
  """With judge=CKPT and prompts=FILE in `arg` (parse_arg's; both or neither), config.evals.judged:
  a pairwise entry answering the prompts at the start and the end, the judge comparing the two."""
  if bool(arg["judge"]) != bool(arg["prompts"]):
    raise ValueError(f"configs/{config_name}.py: judge=CKPT and prompts=FILE go together")
  if arg["judge"]:
    with config.unlocked():
      config.evals.judged = pairwise(arg["prompts"], arg["judge"], at_start=True, **settings)


def ifeval(prompts: str, *, every_steps: int = 0, at_start: bool = True, **settings):
  """A config.evals entry of IFEval (flan_jax/evaluators/ifeval.py) on an IFEval-form JSONL file,
  by default on the starting model and after the last step. Its cadence and every key of
  ifeval.Settings."""
  keys = dataclasses.asdict(ifeval_lib.Settings(prompts=prompts, **settings))
  return ml_collections.ConfigDict(dict(type="ifeval", every_steps=every_steps, at_start=at_start, **keys))


def preference(*, every_steps: int = 0, at_start: bool = True, **settings):
  """A config.evals entry scoring the run's held-out preference pairs (flan_jax/evaluators/
  preference.py), by default on the starting model and after the last step. Its cadence and every
  key of preference.Settings."""
  keys = dataclasses.asdict(preference_lib.Settings(**settings))
  return ml_collections.ConfigDict(dict(type="preference", every_steps=every_steps, at_start=at_start, **keys))


def parse_arg(arg: str | None, **defaults) -> dict:
  """`key=value,key=value` (from `--config configs/X.py:key=value,...`) over `defaults`, typed like them."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r}: expected key=value with key one of {', '.join(defaults)}")
    default = defaults[key]
    values[key] = value.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(value)
  return values
