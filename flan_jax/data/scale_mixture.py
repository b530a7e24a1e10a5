"""A generated mixture at the scale of the FLAN Collection, for measuring `prepare` (bench section
`data_scale`): records of made-up words in one Hugging Face dataset saved to disk, spread over
TASKS tasks of Zipf-like sizes, and an evaluation file, with known contamination and duplicates.

- Half the tasks give every row one shared 12-word instruction and an input of its own; the other
  half give each row its own instruction and no input.
- Texts: 90% short (12 to 40 words), 10% long (150 to 400 words); answers 3 to 20 words.
- EXACT_SHARE of the rows repeat an earlier original row of their task exactly, NEAR_SHARE repeat
  one with every 20th word changed; PLANTED_SHARE copy an evaluation instance into their own text
  (the input, or the instruction where there is none). A copy's original is never planted.

`write` returns where everything is and the indices of what was planted and repeated, so a
measurement can check that exactly the planted rows are dropped as contaminating and exactly the
exact repeats as duplicates.
"""

import json
import os

import numpy as np

TASKS = 20
EVALUATION_INSTANCES = 2_000
EXACT_SHARE, NEAR_SHARE, PLANTED_SHARE = 0.10, 0.10, 0.01


def _words(rng: np.random.Generator, count: int) -> np.ndarray:
  """`count` distinct made-up words of 3 to 9 letters (so that n-grams never collide by chance)."""
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  words = {"".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(int(count * 1.2))}
  return np.array(sorted(words)[:count])


def _texts(rng, vocabulary, lengths) -> list[str]:
  ids = rng.integers(len(vocabulary), size=int(lengths.sum()))
  words, ends = vocabulary[ids], np.cumsum(lengths)
  return [" ".join(words[end - n:end]) for n, end in zip(lengths, ends)]


def _lengths(rng, count: int) -> np.ndarray:
  long = rng.random(count) < 0.1
  return np.where(long, rng.integers(150, 401, count), rng.integers(12, 41, count))


def write(directory: str, records: int, seed: int = 0) -> dict:
  """Writes `records` training rows (`directory`/train, save_to_disk) and the evaluation file
  (`directory`/evaluation.jsonl); returns the local task spec, the evaluation file spec and, per
  task, the row indices planted and repeated exactly."""
  import datasets  # noqa: PLC0415 -- heavy, and only for this
  rng = np.random.default_rng(seed)
  vocabulary = _words(rng, 20_000)
  evaluation = _texts(rng, vocabulary, rng.integers(30, 61, EVALUATION_INSTANCES))
  weights = 1 / np.arange(1, TASKS + 1)
  sizes = np.maximum(1, np.round(records * weights / weights.sum())).astype(int)
  sizes[0] += records - sizes.sum()
  columns = {"instruction": [], "input": [], "output": [], "task": []}
  truth = {}
  for task, size in enumerate(sizes):
    shared = task % 2 == 0
    own = _texts(rng, vocabulary, _lengths(rng, size))
    outputs = _texts(rng, vocabulary, rng.integers(3, 21, size))
    kind = rng.choice(
        4, size=size,
        p=[1 - EXACT_SHARE - NEAR_SHARE - PLANTED_SHARE, EXACT_SHARE, NEAR_SHARE, PLANTED_SHARE])
    kind[0] = 0  # the first row is an original
    originals = np.flatnonzero(kind == 0)
    for i in np.flatnonzero((kind == 1) | (kind == 2)):
      source = originals[rng.integers(np.searchsorted(originals, i))]  # an earlier original
      own[i], outputs[i] = own[source], outputs[source]
      if kind[i] == 2:
        words = own[i].split()
        words[::20] = [
            str(w) for w in vocabulary[rng.integers(len(vocabulary), size=len(words[::20]))]
        ]
        own[i] = " ".join(words)
    for i in np.flatnonzero(kind == 3):
      own[i] = evaluation[rng.integers(len(evaluation))]
    instruction = _texts(rng, vocabulary, np.array([12]))[0]
    columns["instruction"] += [instruction] * size if shared else own
    columns["input"] += own if shared else [""] * size
    columns["output"] += outputs
    columns["task"] += [f"t{task:02d}"] * size
    truth[f"scale_t{task:02d}"] = {
        "planted": np.flatnonzero(kind == 3).tolist(),
        "exact": np.flatnonzero(kind == 1).tolist()
    }
  datasets.Dataset.from_dict(columns).save_to_disk(os.path.join(directory, "train"))
  with open(os.path.join(directory, "evaluation.jsonl"), "w") as f:
    for text in evaluation:
      f.write(json.dumps({"instruction": "Answer.", "input": text, "output": "x"}) + "\n")
  return {
      "task": {
          "name": "scale",
          "hf_dataset": os.path.join(directory, "train"),
          "format": "alpaca",
          "cluster_field": "task"
      },
      "evaluation": {
          "name": "scale_eval",
          "path": os.path.join(directory, "evaluation.jsonl"),
          "format": "alpaca",
          "cluster": "eval"
      },
      "truth": truth
  }


def configure(config, mixture: dict):
  """Points a (tiny) config at a written mixture: its one local task, no held-out cluster, the
  evaluation file checked (decontamination drops), exact deduplication."""
  config.data.mixture = ()
  config.data.local_tasks = (mixture["task"], )
  config.data.held_out_clusters = ()
  config.data.decontamination.evaluation_files = (mixture["evaluation"], )
  config.data.deduplication.mode = "exact"
