"""flan_jax/evaluators/common.py: the registry, config.evals entries and their cadence."""

import ml_collections
import pytest

from flan_jax.evaluators import common, zero_shot


@pytest.mark.parametrize("every_steps, at_start, due_steps", [
    (0, False, [10]), (3, False, [3, 6, 9, 10]), (-1, True, [0]), (5, True, [0, 5, 10])])
def test_an_evaluator_is_due_at_its_cadence_and_after_the_last_step(every_steps, at_start, due_steps):
  scheduled = common.Scheduled("x", None, every_steps, at_start)
  assert [step for step in range(11) if scheduled.due(step, 10)] == due_steps


def test_config_evals_build_registered_evaluators_and_errors_name_the_key(tiny_config):
  context = common.Context(tiny_config, None, None, None, "/tmp/unused")
  built = common.from_config(tiny_config.evals, context)
  assert [(s.name, type(s.evaluator), s.every_steps, s.at_start) for s in built] == [
      ("held_out", zero_shot.ZeroShot, 0, False), ("seen", zero_shot.ZeroShot, 0, False)]
  assert built[1].evaluator.settings.clusters == "seen"
  assert [s.name for s in common.from_config(tiny_config.evals, context, ["seen"])] == ["seen"]
  with pytest.raises(ValueError, match=r"no evaluator \['unseen'\] in config.evals \(it has held_out, seen\)"):
    common.from_config(tiny_config.evals, context, ["unseen"])
  judged = ml_collections.ConfigDict(dict(type="judge", every_steps=0, at_start=False))
  with pytest.raises(ValueError, match=r"evals.judged.type='judge': choose from zero_shot"):
    common.from_config({"judged": judged}, context)
  with pytest.raises(ValueError, match=r"evals.bare: missing every_steps, at_start"):
    common.from_config({"bare": {"type": "zero_shot"}}, context)
