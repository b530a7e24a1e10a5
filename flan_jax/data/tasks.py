"""Task registry: every task has a name, a cluster, a source, templates and metrics.

Clusters are free names: the registered FLAN tasks use FLAN 2021's twelve (with its mutual
exclusions), and a user's local tasks any names of their own.

A task's source maps a split name to a random-access sequence of raw records;
`preprocess` turns one raw record into the flat `fields` dict its templates read
(`answer` always; `options` for tasks whose options vary per example;
`rationale` for tasks that support chain-of-thought; `messages` for
conversational tasks, which have no templates; `references` where an example has
several acceptable answers, `answer` being the one trained on).
"""

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import Any

from flan_jax.data.templates import Template

# FLAN 2021's task clusters (Wei et al. 2021, Figure 3).
CLUSTERS = (
    "nli", "commonsense", "sentiment", "paraphrase", "closed_book_qa",
    "struct_to_text", "translation", "reading_comprehension",
    "reading_comprehension_commonsense", "coreference", "misc", "summarization",
)

# Holding out a cluster also removes clusters too close to it (FLAN 2021, Sec. 2.2):
# paraphrase and NLI test the same skill, and reading comprehension with
# commonsense overlaps both of its parents.
MUTUAL_EXCLUSIONS = {
    "nli": ("paraphrase",),
    "paraphrase": ("nli",),
    "reading_comprehension": ("reading_comprehension_commonsense",),
    "commonsense": ("reading_comprehension_commonsense",),
    "reading_comprehension_commonsense": ("reading_comprehension", "commonsense"),
}


class BadRecordError(ValueError):
  """A raw record that cannot become an example; the message says where and why."""


class UnlabeledRecordError(BadRecordError):
  """A record its dataset marks as having no label (TFDS's -1, e.g. SNLI pairs without a gold
  label): never an example, so always skipped, and counted like a skipped bad record."""


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  cluster: str
  source: Callable[[str], Sequence[Any]]  # split name -> random-access records
  preprocess: Callable[[Any], dict[str, Any]]
  templates: tuple[Template, ...]
  metrics: tuple[str, ...]
  options: tuple[str, ...] | None = None  # the same answer options for every example
  per_example_options: bool = False  # options come from fields["options"]
  splits: tuple[str, str] = ("train", "validation")  # (train, evaluation) split names
  conversational: bool = False  # fields["messages"] is the conversation itself; no templates
  preference: bool = False  # conversational, and fields["rejected"] the answer not preferred (DPO)

  def __post_init__(self):
    if not isinstance(self.cluster, str) or not self.cluster:
      raise ValueError(f"task {self.name}: the cluster must be a non-empty string, not {self.cluster!r}")
    if not self.templates and not self.conversational:
      raise ValueError(f"task {self.name}: no templates")
    for t in self.templates:
      if self.is_classification and not t.inverted and "{options_}" not in t.prompt:
        raise ValueError(f"task {self.name}: classification template lacks {{options_}}: {t.prompt!r}")

  @property
  def is_classification(self) -> bool:
    return self.options is not None or self.per_example_options

  def example_fields(self, record: Any) -> dict[str, Any]:
    """Preprocesses one record and checks what every template relies on."""
    try:
      fields = self.preprocess(record)
    except BadRecordError as e:
      raise type(e)(f"task {self.name}: {e}") from None
    except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError) as e:
      raise BadRecordError(f"task {self.name}: cannot read record ({type(e).__name__}: {e})") from None
    answer = fields.get("answer")
    if not isinstance(answer, str) or not answer.strip():
      raise BadRecordError(f"task {self.name}: field 'answer' is empty")
    if self.is_classification:
      options = self.example_options(fields)
      if answer not in options:
        raise BadRecordError(f"task {self.name}: answer {answer!r} is not one of the options {list(options)}")
    return fields

  def evaluation_split(self, held_out: bool) -> str:
    """The split the task is evaluated on: its evaluation split, or for a held-out task without one
    (a local file without validation rows) its training split, which the run never trains on."""
    if held_out and not len(self.source(self.splits[1])):
      return self.splits[0]
    return self.splits[1]

  def example_options(self, fields: dict[str, Any]) -> tuple[str, ...]:
    return tuple(fields["options"]) if self.per_example_options else self.options


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Adds a task; registering the very same task again is a no-op, a different one an error."""
  if task.name in _TASKS and _TASKS[task.name] != task:
    raise ValueError(f"task {task.name!r} is already registered")
  _TASKS[task.name] = task
  return task


def get(name: str) -> Task:
  if name not in _TASKS:
    close = difflib.get_close_matches(name, _TASKS, n=3)
    raise KeyError(f"unknown task {name!r}" + (f"; did you mean {close}?" if close else ""))
  return _TASKS[name]


def by_cluster(cluster: str) -> list[Task]:
  found = [t for t in _TASKS.values() if t.cluster == cluster]
  if not found:
    raise ValueError(f"no task is in cluster {cluster!r}; clusters are {sorted({t.cluster for t in _TASKS.values()})}")
  return found


def names() -> list[str]:
  return sorted(_TASKS)


def excluded_clusters(held_out: Sequence[str]) -> set[str]:
  """Held-out clusters plus those FLAN also removes from training for them."""
  bad = [c for c in held_out if not isinstance(c, str) or not c]
  if bad:
    raise ValueError(f"data.held_out_clusters must be cluster names (strings), not {bad}")
  excluded = set(held_out)
  for c in held_out:
    excluded.update(MUTUAL_EXCLUSIONS.get(c, ()))
  return excluded
