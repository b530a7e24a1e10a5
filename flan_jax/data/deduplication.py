"""Deduplication of the training examples of a mixture, within and across tasks.

`exact`: two examples are duplicates when their prompt texts (decontamination.prompt_text) and
answers are equal up to case and white space (punctuation counts: "-1" is not "1"); the first one, in mixture order and
then record order, is kept. `near` also drops an example whose prompt shares n-grams covering more
than `threshold` of its words with one kept example (decontamination's rule and index, the kept
examples as the index), whatever the answers.
"""

import dataclasses
from collections.abc import Sequence

from flan_jax.data import decontamination, tasks

MODES = ("off", "exact", "near")


@dataclasses.dataclass(frozen=True)
class Duplicates:
  """Per task, the training indices dropped, and for the first few of each the example kept instead."""
  dropped: dict[str, frozenset[int]]
  examples: dict[str, list[dict]]

  def report(self, sizes: dict[str, int], shown: int = 20) -> dict:
    return {name: {"dropped": len(indices), "of": sizes[name], "examples": self.examples[name][:shown]}
            for name, indices in sorted(self.dropped.items())}


def find(train: Sequence[tasks.Task], mode: str, ngram: int, threshold: float,
         skip: dict[str, frozenset[int]]) -> Duplicates:
  """The duplicates among the training splits of `train`, leaving out the indices in `skip` (already dropped)."""
  if mode not in MODES:
    raise ValueError(f"data.deduplication.mode={mode!r}: choose from {', '.join(MODES)}")
  if mode == "off":
    return Duplicates({}, {})
  if mode == "near":
    decontamination.check(ngram, threshold, "data.deduplication")
  seen: dict[tuple, str] = {}
  index = decontamination.Index(ngram, threshold) if mode == "near" else None
  dropped: dict[str, set[int]] = {}
  examples: dict[str, list[dict]] = {}
  for task in train:
    for i, text, answer in _examples(task, skip.get(task.name, frozenset())):
      key = (" ".join(text.lower().split()), " ".join(answer.lower().split()))
      same = seen.get(key)
      if same is None and index is not None:
        near = index.matches(text)
        same = near[0][0] if near else None
      if same is not None:
        dropped.setdefault(task.name, set()).add(i)
        examples.setdefault(task.name, []).append({"index": i, "duplicate_of": same})
        continue
      seen[key] = f"{task.name}/{i}"
      if index is not None:
        index.add(f"{task.name}/{i}", text)
  return Duplicates({name: frozenset(indices) for name, indices in dropped.items()}, examples)


def _examples(task: tasks.Task, skip: frozenset[int]):
  """(index, prompt text, answer) of a task's readable training records not in `skip`."""
  records = task.source(task.splits[0])
  for i in range(len(records)):
    if i in skip:
      continue
    try:
      fields = task.example_fields(records[i])
    except tasks.BadRecordError:
      continue  # counted where it is trained on
    yield i, decontamination.prompt_text(task, fields), str(fields["answer"])
