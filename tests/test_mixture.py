import random

import numpy as np
import pytest

from flan_jax.data import mixture, pipeline
from tests.helpers import load_config, sentence, write_jsonl


def test_examples_proportional_with_cap_and_temperature():
  mixture.register("test_mix_small", ("mini_arithmetic", "mini_calendar"))
  sizes = {"mini_arithmetic": 10_000, "mini_calendar": 1_000}
  r = mixture.rates(["test_mix_small"], sizes=sizes, cap=3000, temperature=1.0, weights={})
  assert r == {"mini_arithmetic": 3000.0, "mini_calendar": 1000.0}
  r = mixture.rates(["test_mix_small"], sizes=sizes, cap=0, temperature=2.0, weights={})
  assert r == pytest.approx({"mini_arithmetic": 100.0, "mini_calendar": 1000 ** 0.5})
  r = mixture.rates(["test_mix_small"], sizes=sizes, cap=3000, temperature=1.0, weights={"mini_calendar": 7.0})
  assert r == {"mini_arithmetic": 3000.0, "mini_calendar": 7.0}


def test_nested_mixture_weight_is_shared_by_its_tasks():
  mixture.register("test_mix_inner", ("mini_arithmetic", "mini_calendar"))
  mixture.register("test_mix_outer", ("test_mix_inner", "mini_string_ops"))
  sizes = {"mini_arithmetic": 300, "mini_calendar": 100, "mini_string_ops": 1000}
  r = mixture.rates(["test_mix_outer"], sizes=sizes, cap=3000, temperature=1.0, weights={"test_mix_inner": 1000.0})
  assert r == pytest.approx({"mini_arithmetic": 750.0, "mini_calendar": 250.0, "mini_string_ops": 1000.0})
  with pytest.raises(KeyError, match="unknown task.*nonexistent"):
    mixture.rates(["test_mix_outer"], sizes=sizes, cap=1, temperature=1.0, weights={"nonexistent": 1.0})


def test_held_out_clusters_and_mutual_exclusions(tiny_config):
  data = tiny_config.data
  data.held_out_clusters = ("nli",)
  mix = pipeline.resolve_mixture(data)
  assert {t.cluster for t in mix.evaluation} == {"nli"}
  assert not {t.cluster for t in mix.train} & {"nli", "paraphrase"}
  assert sum(mix.rates.values()) == pytest.approx(1.0)
  data.held_out_clusters = ("reading_comprehension_commonsense",)
  with pytest.raises(ValueError, match="no task in the mixture"):
    pipeline.resolve_mixture(data)
  data.held_out_clusters = ("physics",)
  with pytest.raises(ValueError, match=r"\['physics'\] have no task in the mixture.*its clusters are \['closed_book_qa'"):
    pipeline.resolve_mixture(data)


def test_unknown_task_in_config(tiny_config):
  tiny_config.data.mixture = ("flan_mini", "mini_does_not_exist")
  with pytest.raises(KeyError, match="unknown task 'mini_does_not_exist'"):
    pipeline.resolve_mixture(tiny_config.data)


def test_a_task_is_capped_first_at_a_fixed_draw(tmp_path):
  """data.max_examples_per_task: a task contributes that many rows, drawn from all of it, the same
  ones in every run."""
  rng = random.Random(0)
  rows = [{"instruction": sentence(rng, 5), "input": sentence(rng, 20), "output": f"{i}"} for i in range(500)]
  config = load_config("tiny")
  config.data.mixture = ()
  config.data.held_out_clusters = ()
  config.data.local_tasks = ({"name": "capped", "path": write_jsonl(tmp_path / "rows.jsonl", rows),
                              "format": "alpaca", "cluster": "a"},)
  config.data.max_examples_per_task = 100
  mix = pipeline.resolve_mixture(config.data)
  kept = mix.kept["capped"]
  assert mix.sizes == {"capped": 100} and len(set(kept)) == 100 and list(kept) == sorted(kept)
  assert kept.max() > 400 and kept.min() < 100  # drawn from the whole task, not its head
  np.testing.assert_array_equal(pipeline.resolve_mixture(config.data).kept["capped"], kept)
  config.data.max_examples_per_task = 0
  assert pipeline.resolve_mixture(config.data).sizes == {"capped": 500}
