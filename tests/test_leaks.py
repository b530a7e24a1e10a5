"""Held-out clusters are held out: for every registered mixture and every choice of held-out
cluster, no held-out task, none of its instructions and none of its evaluation inputs reach training."""

import re

import numpy as np
import pytest

from flan_jax.data import decontamination, mixture, pipeline, render, tasks
from tests.helpers import load_config

MIXTURES = sorted(mixture.mixtures())  # pipeline imports every registered mixture


def instruction_phrases(pattern: str) -> list[str]:
  """The instruction text of a template: its pieces between fields, of four words or more (shorter
  ones are common English: "What is the")."""
  pieces = (p.strip(" \n:?.\"") for p in re.split(r"\{\w+\}", pattern))
  return [p for p in pieces if len(p.split()) >= 4]


def clusters_of(name):
  return sorted({t.cluster for t in mixture.leaf_tasks([name])})


@pytest.mark.parametrize("name", MIXTURES)
def test_no_held_out_task_or_instruction_is_trained_on(name):
  assert clusters_of(name)
  for cluster in clusters_of(name):
    train, evaluation = mixture.split_by_held_out([name], [cluster])
    excluded = tasks.excluded_clusters([cluster])
    assert evaluation and {t.cluster for t in evaluation} == {cluster}
    assert not {t.cluster for t in train} & excluded
    patterns = {p for t in train for template in t.templates for p in (template.prompt, template.response)}
    trained = "\n".join(patterns)
    for task in mixture.leaf_tasks([name]):
      if task.cluster not in excluded:
        continue
      for template in task.templates:
        assert template.prompt not in patterns, f"{task.name}'s template {template.prompt!r} is trained with {cluster} held out"
        for phrase in instruction_phrases(template.prompt):
          assert phrase not in trained, f"{task.name}'s instruction {phrase!r} is trained with {cluster} held out"


def test_no_held_out_evaluation_input_reaches_the_training_stream():
  """flan_mini, whose data is at hand: every cluster held out in turn, a sample of the rendered
  training stream checked against every held-out evaluation instance (8-gram rule)."""
  config = load_config("tiny")
  for cluster in clusters_of("flan_mini"):
    config.data.held_out_clusters = (cluster,)
    mix = pipeline.resolve_mixture(config.data)
    index = decontamination.Index()
    for task in mix.evaluation:
      for i, record in enumerate(task.source(task.evaluation_split(held_out=True))):
        index.add(f"{task.name}/{i}", decontamination.prompt_text(task, task.example_fields(record)))
    renderer = render.Renderer(config.data, None, mix.train, render.Stats())
    records = pipeline.mixed_records(mix, seed=0)
    names = set()
    for i in range(0, 40_000, 20):
      names.add(records[i][0])
      (_, prompt), _ = renderer.render(records[i], np.random.default_rng(i))[0]
      assert not index.matches(prompt), f"{records[i][0]} example {records[i][1]} has a held-out {cluster} input"
    assert names == {t.name for t in mix.train}
