"""Decontamination: n-gram overlap between training examples and evaluation instances.

The rule is Tülu 3's: texts are normalised (lower case, runs of letters and digits as words) and
cut into word n-grams (n = 8 by default). A training example contaminates an evaluation instance
when the n-grams they share cover more than `threshold` (default 0.5) of the instance's words;
that training example is the one flagged. An instance shorter than n words has no n-grams and is
never matched.

It scales by hashing: the index holds each evaluation instance's n-gram hashes once, and training
examples stream past it, each costing its own n-grams and one dictionary lookup per n-gram.
Python's string hash is salted per process, so an index is only ever used in the process that
built it.
"""

import collections
import dataclasses
import functools
import re
from collections.abc import Iterable

from flan_jax.data import tasks
from flan_jax.data.mixture import capped

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
  """The normalised words of a text: lower case, runs of letters and digits."""
  return _WORD.findall(text.lower())


def ngram_hashes(tokens: list[str], n: int) -> list[int]:
  """The hash of every n-gram of `tokens`, in order (position i: tokens[i:i + n])."""
  return [hash(tuple(tokens[i:i + n])) for i in range(len(tokens) - n + 1)]


def check(ngram: int, threshold: float, where: str = "data.decontamination"):
  if ngram < 4:
    raise ValueError(f"{where}.ngram={ngram}: n-grams shorter than 4 words match common phrases; use 4 or more")
  if not 0 < threshold <= 1:
    raise ValueError(f"{where}.threshold={threshold}: the share of an instance's words that must be covered is in "
                     "(0, 1]")


class Index:
  """The n-grams of a set of evaluation instances, each instance named (e.g. `task/index`)."""

  def __init__(self, ngram: int = 8, threshold: float = 0.5):
    check(ngram, threshold)
    self.ngram, self.threshold = ngram, threshold
    self.names: list[str] = []
    self.lengths: list[int] = []
    self.postings: dict[int, list[tuple[int, int]]] = {}  # n-gram hash -> [(instance, position)]

  def add(self, name: str, text: str):
    tokens = words(text)
    instance = len(self.names)
    self.names.append(name)
    self.lengths.append(len(tokens))
    for position, key in enumerate(ngram_hashes(tokens, self.ngram)):
      self.postings.setdefault(key, []).append((instance, position))

  def __len__(self) -> int:
    return len(self.names)

  def matches(self, text: str) -> list[tuple[str, float]]:
    """(instance name, share of its words covered) of every instance `text` contaminates."""
    covered: dict[int, set[int]] = {}
    for key in set(ngram_hashes(words(text), self.ngram)):
      for instance, position in self.postings.get(key, ()):
        covered.setdefault(instance, set()).update(range(position, position + self.ngram))
    found = [(self.names[i], len(positions) / self.lengths[i]) for i, positions in covered.items()]
    return sorted((name, share) for name, share in found if share > self.threshold)


def scan(index: Index, examples: Iterable[tuple[str, int, str]]) -> dict[str, list[dict]]:
  """Streams (task, index, prompt text) training examples past the index: per task, the examples
  that contaminate an instance, with the instances and their coverage."""
  flagged: dict[str, list[dict]] = {}
  for task, i, text in examples:
    found = index.matches(text)
    if found:
      flagged.setdefault(task, []).append({"index": i, "instances": [{"name": n, "coverage": round(c, 3)}
                                                                     for n, c in found]})
  return flagged


# Fields that hold what a model should produce, never compared.
OUTPUT_FIELDS = ("answer", "references", "rationale")


def prompt_text(task: tasks.Task, fields: dict, shared: frozenset[int] = frozenset()) -> str:
  """What is compared of an example: its input fields (every string field but the outputs, and
  per-example options), or a conversation's turns but the assistant's and the system prompt. An
  instruction in `shared` (hashes: see shared_instructions) is left out where the row has an input
  of its own, since it is the task's text, not the row's."""
  instruction = fields.get("instruction")
  if fields.get("input", "").strip() and hash(instruction) in shared:
    fields = {k: v for k, v in fields.items() if k != "instruction"}
    if task.conversational:
      fields["messages"] = [(r, t) for r, t in fields["messages"] if (r, t) != ("user", instruction)]
  if task.conversational:
    return "\n".join(text for role, text in fields["messages"] if role not in ("assistant", "system"))
  parts = []
  for key, value in fields.items():
    if key in OUTPUT_FIELDS:
      continue
    if isinstance(value, str):
      parts.append(value)
    elif isinstance(value, (list, tuple)):
      parts += [v for v in value if isinstance(v, str)]
  return "\n".join(parts)


def _readable(task: tasks.Task, split: str, indices=None):
  """(index, fields) of a split's readable records (all, or those at `indices`); unreadable ones
  are counted where they are trained or evaluated, not here."""
  records = task.source(split)
  for i in range(len(records)) if indices is None else indices:
    try:
      yield int(i), task.example_fields(records[int(i)])
    except tasks.BadRecordError:
      continue


def shared_instructions(task: tasks.Task, split: str, indices=None) -> frozenset[int]:
  """Hashes of the instructions that several rows of a split (all, or those at `indices`) pair with
  an input of their own: Alpaca or Dolly files of one task, one instruction over many inputs."""
  counts = collections.Counter(hash(f["instruction"]) for _, f in _readable(task, split, indices)
                               if "instruction" in f and f.get("input", "").strip())
  return frozenset(key for key, count in counts.items() if count > 1)


def texts(task: tasks.Task, split: str, indices=None):
  """(index, prompt text, fields) of a split's readable records (all, or those at `indices`): each
  row's own text (prompt_text, leaving out the instruction the split's rows share)."""
  shared = shared_instructions(task, split, indices)
  for i, fields in _readable(task, split, indices):
    yield i, prompt_text(task, fields, shared), fields


@dataclasses.dataclass(frozen=True)
class Found:
  """What decontamination found: per training task, the examples that contaminate evaluation
  instances (index, instances, coverage); per evaluation set, its instance count and how many were
  found in training."""
  flagged: dict[str, list[dict]]
  evaluation_sets: dict[str, dict[str, int]]

  def report(self, sizes: dict[str, int], shown: int = 20) -> dict:
    """The data report's `contamination` section: counts, and the first `shown` examples of each task."""
    return {"training_tasks": {name: {"flagged": len(found), "of": sizes[name], "examples": found[:shown]}
                               for name, found in sorted(self.flagged.items())},
            "evaluation_sets": self.evaluation_sets}


@functools.lru_cache(maxsize=16)
def find(train: tuple[tasks.Task, ...], evaluation_sets: tuple[tuple[str, tasks.Task, str], ...], ngram: int,
         threshold: float, limit: int = 0) -> Found:
  """Every training example of `train` (their training splits, each capped at `limit` examples:
  mixture.capped) against every instance of the evaluation sets ((name, task, split), ...). Cached
  per process: tasks compare by their sources, so a re-registered local task is a new key."""
  index = Index(ngram, threshold)
  for name, task, split in evaluation_sets:
    for i, text, _ in texts(task, split):
      index.add(f"{name}/{i}", text)
  flagged = scan(index, ((task.name, i, text) for task in train
                         for i, text, _ in texts(task, task.splits[0], capped(task, limit))))
  found_instances = {m["name"] for found in flagged.values() for f in found for m in f["instances"]}
  hit = collections.Counter(name.rsplit("/", 1)[0] for name in found_instances)
  instances = collections.Counter(name.rsplit("/", 1)[0] for name in index.names)
  return Found(flagged, {name: {"instances": instances[name], "found_in_training": hit[name]}
                         for name, _, _ in evaluation_sets})
