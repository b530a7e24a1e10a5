import pytest

from flan_jax.data import pipeline, tasks
from flan_jax.data.templates import Template


def test_lookup_by_name_and_cluster():
  assert pipeline  # importing the pipeline registers flan_mini and the TFDS tasks
  assert tasks.get("mini_arithmetic").cluster == "misc"
  assert {t.name for t in tasks.by_cluster("coreference")} >= {"mini_pronoun_gender", "mini_winograd_size", "winogrande"}
  with pytest.raises(KeyError, match="unknown task 'mini_arithmetc'.*mini_arithmetic"):
    tasks.get("mini_arithmetc")
  with pytest.raises(ValueError, match="no task is in cluster 'poetry'"):
    tasks.by_cluster("poetry")


def test_flan_mutual_exclusions():
  assert tasks.excluded_clusters(["nli"]) == {"nli", "paraphrase"}
  assert tasks.excluded_clusters(["commonsense"]) == {"commonsense", "reading_comprehension_commonsense"}
  assert tasks.excluded_clusters(["reading_comprehension_commonsense"]) == {
      "reading_comprehension_commonsense", "reading_comprehension", "commonsense"}
  assert tasks.excluded_clusters(["sentiment"]) == {"sentiment"}
  assert tasks.excluded_clusters(["write a business email"]) == {"write a business email"}  # users' own names


def test_task_validation():
  common = dict(source=lambda split: [], preprocess=dict, metrics=("accuracy",))
  with pytest.raises(ValueError, match="lacks {options_}"):
    tasks.Task(name="x", cluster="misc", templates=(Template("{q}"),), options=("a", "b"), **common)
  assert tasks.Task(name="x", cluster="business emails", templates=(Template("{q}"),), **common).cluster  # free names
  with pytest.raises(ValueError, match="the cluster must be a non-empty string"):
    tasks.Task(name="x", cluster=3, templates=(Template("{q}"),), **common)
  t = tasks.Task(name="x", cluster="misc", templates=(Template("{q}{options_}"),), options=("a", "b"), **common)
  with pytest.raises(tasks.BadRecordError, match="task x: answer 'c' is not one of the options"):
    t.example_fields({"q": "?", "answer": "c"})
  with pytest.raises(tasks.BadRecordError, match="task x: field 'answer' is empty"):
    t.example_fields({"q": "?", "answer": " "})


def test_registering_a_different_task_under_a_taken_name_fails():
  existing = tasks.get("mini_arithmetic")
  tasks.register(existing)  # the same task again is fine
  with pytest.raises(ValueError, match="already registered"):
    tasks.register(tasks.Task(name="mini_arithmetic", cluster="misc", source=lambda s: [], preprocess=dict,
                              templates=(Template("{q}"),), metrics=()))
