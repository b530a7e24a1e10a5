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

import re
from collections.abc import Iterable

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
