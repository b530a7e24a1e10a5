import collections

import numpy as np

from flan_jax import metrics
from flan_jax.data import mixture, tasks
from flan_jax.data.sources import flan_mini


def test_clusters_tasks_and_templates():
  by_cluster = collections.defaultdict(list)
  for name in flan_mini.TASKS:
    by_cluster[tasks.get(name).cluster].append(tasks.get(name))
  assert len(by_cluster) >= 10
  assert all(len(ts) >= 2 for ts in by_cluster.values())
  mini = [tasks.get(n) for n in flan_mini.TASKS]
  assert any(t.is_classification for t in mini) and any(not t.is_classification for t in mini)
  assert all(len(t.templates) >= 5 for t in mini)
  assert any(t.inverted for task in mini for t in task.templates)
  assert [t.name for t in mixture.leaf_tasks(["flan_mini"])] == list(flan_mini.TASKS)


def test_splits_are_distinct_and_disjoint():
  for name in flan_mini.TASKS:
    task = tasks.get(name)
    train, validation = task.source("train"), task.source("validation")
    assert (len(train), len(validation)) == (flan_mini.TRAIN_SIZE, flan_mini.VALIDATION_SIZE)
    inputs = lambda rows: [tuple(sorted((k, str(v)) for k, v in r.items() if k not in ("answer", "rationale")))
                           for r in rows]
    assert len(set(inputs(train))) == len(train), name
    assert not set(inputs(train)) & set(inputs(validation)), name


def test_every_example_is_valid_for_its_task():
  for name in flan_mini.TASKS:
    task = tasks.get(name)
    for record in task.source("validation"):
      task.example_fields(record)  # raises on an answer outside the options or an empty answer


def test_answers_are_computed_correctly():
  for r in tasks.get("mini_arithmetic").source("train")[:200]:
    a, op, b = r["expression"].split()
    assert int(r["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
  for r in tasks.get("mini_calendar").source("train")[:200]:
    words = r["question"].split()
    k, start = int(words[7]), words[-1].rstrip("?")
    assert r["answer"] == flan_mini.DAYS[(flan_mini.DAYS.index(start) + k) % 7]
  for r in tasks.get("mini_string_ops").source("train")[:200]:
    if r["instruction"].startswith("Reverse"):
      assert r["answer"] == r["text"][::-1]
    if r["instruction"].startswith("Sort"):
      assert r["answer"].split() == sorted(r["text"].split())


def test_generation_is_deterministic():
  flan_mini.generate.cache_clear()
  first = flan_mini.generate("mini_passage_qa")["train"][:50]
  flan_mini.generate.cache_clear()
  assert flan_mini.generate("mini_passage_qa")["train"][:50] == first
  # Some passage questions are unanswerable and answered with a refusal.
  answers = [r["answer"] for r in flan_mini.generate("mini_passage_qa")["train"]]
  assert 0.05 < np.mean([a == flan_mini.REFUSAL for a in answers]) < 0.3


def test_a_translation_pair_is_in_one_split_in_both_directions():
  en_es, es_en = flan_mini.generate("mini_translate_en_es"), flan_mini.generate("mini_translate_es_en")
  trained = {(f["source"], f["answer"]) for f in en_es["train"]}
  assert not any((f["answer"], f["source"]) in trained for f in es_en["validation"])
  trained = {(f["source"], f["answer"]) for f in es_en["train"]}
  assert not any((f["answer"], f["source"]) in trained for f in en_es["validation"])


def test_safety_tasks_pair_requests_to_decline_with_look_alikes_to_answer():
  for name in ("mini_safety_harm", "mini_safety_crime"):
    assert tasks.get(name).cluster == "safety" and tasks.get(name).metrics[0] == "refusal"
    examples = flan_mini.generate(name)["validation"]
    harmful = [f for f in examples if f["refuse"]]
    assert 0.4 < len(harmful) / len(examples) < 0.6
    assert all(f["answer"] == flan_mini.DECLINE for f in harmful)
    assert not any(metrics.declines(f["answer"]) for f in examples if not f["refuse"])
