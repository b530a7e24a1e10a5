"""Deduplication of the training examples of a mixture, within and across tasks.

`exact`: two examples are duplicates when their prompt texts (decontamination.prompt_text) and
answers are equal up to case and white space (punctuation counts: "-1" is not "1"); the first one,
in mixture order and then record order, is kept. Examples are kept as 16-byte BLAKE2 digests of
that text, so memory grows by a digest per example, never by its text. `near` also drops an
example whose own text (decontamination.texts: less the instruction its task's rows share) shares
n-grams covering more than `threshold` of its words with one kept example (decontamination's rule
and index, the kept examples as the index), whatever the answers.
"""

import dataclasses
import hashlib
from collections.abc import Sequence

from flan_jax.data import decontamination, tasks

MODES = ("off", "exact", "near")
SHOWN = 20  # duplicates kept per task as examples for the report


@dataclasses.dataclass(frozen=True)
class Duplicates:
  """Per task, the training indices dropped, and for the first SHOWN of each the example kept
  instead."""
  dropped: dict[str, frozenset[int]]
  examples: dict[str, list[dict]]

  def report(self, sizes: dict[str, int]) -> dict:
    return {name: {"dropped": len(indices), "of": sizes[name], "examples": self.examples[name]}
            for name, indices in sorted(self.dropped.items())}


def find(train: Sequence[tasks.Task], mode: str, ngram: int, threshold: float,
         candidates: dict[str, Sequence[int]]) -> Duplicates:
  """The duplicates among the training examples of `train` at `candidates` (per task, the indices
  not already dropped)."""
  if mode not in MODES:
    raise ValueError(f"data.deduplication.mode={mode!r}: choose from {', '.join(MODES)}")
  if mode == "off":
    return Duplicates({}, {})
  if mode == "near":
    decontamination.check(ngram, threshold, "data.deduplication")
  seen: dict[bytes, tuple[int, int]] = {}  # digest -> (task number, index) of the example kept
  index = decontamination.Index(ngram, threshold) if mode == "near" else None
  dropped: dict[str, set[int]] = {}
  examples: dict[str, list[dict]] = {}
  for number, task in enumerate(train):
    for i, text, fields in decontamination.texts(task, task.splits[0], candidates[task.name]):
      prompt, answer = decontamination.prompt_text(task, fields), str(fields["answer"])
      normalised = " ".join(prompt.lower().split()) + "\0" + " ".join(answer.lower().split())
      key = hashlib.blake2b(normalised.encode(), digest_size=16).digest()
      same = seen.get(key)
      if same is not None:
        same = f"{train[same[0]].name}/{same[1]}"
      elif index is not None:
        near = index.matches(text)
        same = near[0][0] if near else None
      if same is not None:
        dropped.setdefault(task.name, set()).add(i)
        if len(examples.setdefault(task.name, [])) < SHOWN:
          examples[task.name].append({"index": i, "duplicate_of": same})
        continue
      seen[key] = (number, i)
      if index is not None:
        index.add(f"{task.name}/{i}", text)
  return Duplicates({name: frozenset(indices) for name, indices in dropped.items()}, examples)

