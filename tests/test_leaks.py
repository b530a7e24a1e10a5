"""Held-out clusters are held out: for every registered mixture and every choice of held-out
cluster, no held-out task, none of its instructions and none of its evaluation inputs reach training."""

import random
import re

import numpy as np
import pytest

from flan_jax.data import decontamination, mixture, pipeline, render, tasks
from tests.helpers import dropped, load_config, sentence, write_jsonl

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


def test_no_held_out_evaluation_input_reaches_the_training_stream(tokenizer):
  """flan_mini, whose data is at hand: every cluster held out in turn, a sample of the rendered
  training stream (zero-shot, few-shot and chain-of-thought prompts) checked against every held-out
  evaluation instance (8-gram rule)."""
  config = load_config("tiny")
  config.data.template.prompt_mix = dict(zero_shot=1.0, few_shot=1.0, chain_of_thought=1.0)
  for cluster in clusters_of("flan_mini"):
    config.data.held_out_clusters = (cluster,)
    mix = pipeline.resolve_mixture(config.data)
    index = decontamination.Index()
    for task in mix.evaluation:
      for i, record in enumerate(task.source(task.evaluation_split(held_out=True))):
        index.add(f"{task.name}/{i}", decontamination.prompt_text(task, task.example_fields(record)))
    renderer = render.Renderer(config.data, tokenizer, mix.train, render.Stats(), kept=mix.kept)
    records = pipeline.mixed_records(mix, seed=0)
    names = set()
    for i in range(0, 40_000, 20):
      names.add(records[i][0])
      (_, prompt), _ = renderer.render(records[i], np.random.default_rng(i))[0]
      assert not index.matches(prompt), f"{records[i][0]} example {records[i][1]} has a held-out {cluster} input"
    assert names == {t.name for t in mix.train}


def test_few_shot_exemplars_come_only_from_kept_rows(tmp_path, tokenizer):
  """A training row that copies a held-out instance is dropped, and never returns as another
  example's exemplar; nor does a duplicate row."""
  rng = random.Random(0)
  held = [{"instruction": "Answer.", "input": sentence(rng, 30), "output": "yes"} for _ in range(10)]
  train = [{"instruction": sentence(rng, 6), "input": sentence(rng, 20), "output": f"a{i}"} for i in range(60)]
  train[7] = {**train[7], "input": held[2]["input"]}
  train[30] = dict(train[31])
  config = load_config("tiny")
  config.data.mixture = ()
  config.data.held_out_clusters = ("held",)
  config.data.local_tasks = tuple(
      {"name": f"fs_{name}", "path": write_jsonl(tmp_path / f"{name}.jsonl", rows), "format": "alpaca",
       "cluster": name, "templates": [["{instruction}\n{input}", "{answer}"]]}
      for name, rows in (("train", train), ("held", held)))
  config.data.template.prompt_mix = dict(few_shot=1.0)
  mix = pipeline.resolve_mixture(config.data)
  assert dropped(mix) == {"fs_train": frozenset({7, 31})}
  index = decontamination.Index()
  index.add("held/2", held[2]["input"])
  stats = render.Stats()
  renderer = render.Renderer(config.data, tokenizer, mix.train, stats, kept=mix.kept)
  records = pipeline.mixed_records(mix, seed=0)
  for i in range(300):
    (_, prompt), _ = renderer.render(records[i], np.random.default_rng(i))[0]
    assert not index.matches(prompt), f"example {i} carries the held-out instance"
    assert train[31]["input"] not in prompt.replace(train[30]["input"], "", 1)
  assert stats.renderings["prompt:few_shot"] == 300
