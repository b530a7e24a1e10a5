"""The generated scale mixture: what it plants is what decontamination and deduplication drop."""

from flan_jax.data import pipeline, scale_mixture
from tests.helpers import dropped, load_config


def test_exactly_the_planted_copies_and_exact_repeats_are_dropped(tmp_path):
  mixture = scale_mixture.write(str(tmp_path), records=4000)
  config = load_config("tiny")
  scale_mixture.configure(config, mixture)
  mix = pipeline.resolve_mixture(config.data)
  truth = mixture["truth"]
  assert len(mix.train) == scale_mixture.TASKS and sum(len(t.source("train"))
                                                       for t in mix.train) == 4000
  assert sum(len(t["planted"])
             for t in truth.values()) > 20 and sum(len(t["exact"]) for t in truth.values()) > 300
  assert dropped(mix) == {
      name: frozenset(t["planted"] + t["exact"]) for name, t in truth.items()
      if t["planted"] or t["exact"]
  }
  flagged = mix.contamination["training_tasks"]
  assert {
      name: found["flagged"] for name, found in flagged.items()
  } == {
      name: len(t["planted"]) for name, t in truth.items() if t["planted"]
  }
  assert {
      name: found["dropped"] for name, found in mix.duplicates.items()
  } == {
      name: len(t["exact"]) for name, t in truth.items() if t["exact"]
  }
