"""Evaluators from `config.evals`, and when each is due.

Every entry of `config.evals` is one evaluator under its own name: its `type` (a key of REGISTRY),
its cadence and the type's own keyword arguments. The cadence: `every_steps` N > 0 runs it every N
steps and after the last, 0 after the last step only, -1 never; `at_start` also runs it on the
starting parameters (a fresh run's step 0: an imported model before tuning). An evaluator is
`REGISTRY[type](context, name=..., **kwargs)`, where `context` (Context) holds what any evaluator reads;
its `run(params, step)` writes its results under the workdir (process 0) and returns its headline
metrics, `written(step)` says whether its results for that step are on disk. The training loop
knows nothing else about it.
"""

import dataclasses
from typing import Any

from flan_jax.evaluators import ifeval, pairwise, preference, zero_shot

# type -> evaluator class. zero_shot: FLAN's held-out evaluation; pairwise: a judge's win rate over a
# baseline; ifeval: verifiable instruction following; preference: held-out preference pairs (DPO).
REGISTRY = {"zero_shot": zero_shot.ZeroShot, "pairwise": pairwise.Pairwise, "ifeval": ifeval.IFEval,
            "preference": preference.Preference}
CADENCE = ("type", "every_steps", "at_start")


@dataclasses.dataclass(frozen=True)
class Context:
  """What evaluators read: the run's config (its data and loss settings), the model (flax module),
  its tokenizer, the mesh its parameters live on, and the workdir results go to."""
  config: Any
  model: Any
  tokenizer: Any
  mesh: Any
  workdir: str


@dataclasses.dataclass(frozen=True)
class Scheduled:
  """An evaluator with its cadence."""
  name: str
  evaluator: Any
  every_steps: int
  at_start: bool

  @property
  def enabled(self) -> bool:
    """Whether it runs at all (every_steps -1 with at_start False: switched off)."""
    return self.every_steps >= 0 or self.at_start

  def due(self, step: int, last_step: int) -> bool:
    """Whether it runs after `step` of a run of `last_step` steps (step 0: the starting parameters)."""
    if step == 0:
      return self.at_start
    if self.every_steps < 0:
      return False
    return step == last_step or (self.every_steps > 0 and step % self.every_steps == 0)


def from_config(evals, context: Context, names=None) -> list[Scheduled]:
  """The evaluators of `evals` (config.evals), or of those of its `names`; errors name the key."""
  unknown = set(names or ()) - set(evals)
  if unknown:
    raise ValueError(f"no evaluator {sorted(unknown)} in config.evals (it has {', '.join(evals) or 'none'})")
  scheduled = []
  for name, entry in evals.items():
    if names and name not in names:
      continue
    missing = [key for key in CADENCE if key not in entry]
    if missing:
      raise ValueError(f"evals.{name}: missing {', '.join(missing)} (every entry has {', '.join(CADENCE)})")
    if entry["type"] not in REGISTRY:
      raise ValueError(f"evals.{name}.type={entry['type']!r}: choose from {', '.join(REGISTRY)}")
    kwargs = {k: v for k, v in entry.items() if k not in CADENCE}
    evaluator = REGISTRY[entry["type"]](context, name=name, **kwargs)
    scheduled.append(Scheduled(name, evaluator, entry["every_steps"], entry["at_start"]))
  return scheduled

