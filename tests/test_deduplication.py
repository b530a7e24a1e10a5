"""Deduplication: exact copies within and across tasks are dropped and counted; near copies with `near`."""

import random

import pytest

from flan_jax.data import pipeline
from tests.helpers import dropped, lightly_edited, load_config, sentence, write_jsonl


def _config(tmp_path, first, second, prefix="dd"):
  config = load_config("tiny")
  config.data.mixture = ()
  config.data.held_out_clusters = ()
  config.data.decontamination.mode = "off"
  config.data.local_tasks = (
      {"name": f"{prefix}_first", "path": write_jsonl(tmp_path / "first.jsonl", first), "format": "alpaca", "cluster": "a"},
      {"name": f"{prefix}_second", "path": write_jsonl(tmp_path / "second.jsonl", second), "format": "alpaca",
       "cluster": "b"})
  return config


def test_exact_copies_within_and_across_tasks_are_dropped_and_counted(tmp_path):
  rng = random.Random(0)
  first = [{"instruction": "Repeat.", "input": sentence(rng, 30), "output": f"answer {i}"} for i in range(100)]
  second = [{"instruction": "Summarise.", "input": sentence(rng, 30), "output": f"other {i}"} for i in range(100)]
  first[40] = dict(first[3])  # within a task
  first[41] = {**first[4], "input": "  " + first[4]["input"].upper() + " "}  # up to case and white space
  second[7] = dict(first[10])  # across tasks: the first task's example is kept
  first[50] = {**first[5], "output": "a different answer"}  # same prompt, another answer: not a duplicate
  first[60] = {**first[6], "output": "-1"}
  first[61] = {**first[6], "output": "1"}  # punctuation counts
  config = _config(tmp_path, first, second)
  mix = pipeline.resolve_mixture(config.data)
  assert dropped(mix) == {"dd_first": frozenset({40, 41}), "dd_second": frozenset({7})}
  assert mix.sizes == {"dd_first": 98, "dd_second": 99}
  assert mix.duplicates["dd_second"] == {"dropped": 1, "of": 100, "examples": [{"index": 7, "duplicate_of": "dd_first/10"}]}
  assert [e["duplicate_of"] for e in mix.duplicates["dd_first"]["examples"]] == ["dd_first/3", "dd_first/4"]
  stream = pipeline.mixed_records(mix, seed=0)
  assert not {(stream[i][0], stream[i][1]) for i in range(3000)} & {("dd_first", 40), ("dd_first", 41), ("dd_second", 7)}

  config.data.deduplication.mode = "off"
  assert dropped(pipeline.resolve_mixture(config.data)) == {}


def test_near_copies_only_with_near(tmp_path):
  rng = random.Random(1)
  first = [{"instruction": "Repeat.", "input": sentence(rng, 40), "output": "x"} for _ in range(50)]
  second = [{"instruction": "Repeat.", "input": sentence(rng, 40), "output": "y"} for _ in range(50)]
  second[20]["input"] = lightly_edited(rng, first[30]["input"])
  config = _config(tmp_path, first, second, prefix="near")
  assert dropped(pipeline.resolve_mixture(config.data)) == {}
  config.data.deduplication.mode = "near"
  mix = pipeline.resolve_mixture(config.data)
  assert dropped(mix) == {"near_second": frozenset({20})}
  assert mix.duplicates["near_second"]["examples"] == [{"index": 20, "duplicate_of": "near_first/30"}]


@pytest.mark.parametrize("key, value, message", [
    ("mode", "fuzzy", r"data.deduplication.mode='fuzzy': choose from off, exact, near"),
    ("ngram", 2, r"data.deduplication.ngram=2"),
    ("threshold", 0.0, r"data.deduplication.threshold=0.0"),
])
def test_bad_settings_name_the_key(tmp_path, key, value, message):
  config = _config(tmp_path, [{"instruction": "a", "output": "b"}], [{"instruction": "c", "output": "d"}],
                   prefix=f"bad_{key}")
  config.data.deduplication.mode = "near"
  config.data.deduplication[key] = value
  with pytest.raises(ValueError, match=message):
    pipeline.resolve_mixture(config.data)
