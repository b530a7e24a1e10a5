import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_jax import optim
from tests.helpers import load_config


def optim_config(**overrides):
  cfg = load_config("tiny").optim
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize("kind, end", [("constant", 1.0), ("cosine", 0.1), ("linear", 0.1)])
def test_schedule_warms_up_linearly_then_decays_to_the_final_fraction(kind, end):
  lr = optim.schedule(optim_config(learning_rate=2.0, warmup_steps=10, schedule=kind, final_lr_fraction=0.1), 110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(1.0) and float(lr(10)) == pytest.approx(2.0)
  assert float(lr(110)) == pytest.approx(2.0 * end)
  if kind == "cosine":
    assert float(lr(60)) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))


def test_weight_decay_skips_norm_scales_and_biases_even_when_layers_are_stacked():
  params = {"embedding": jnp.ones((4, 2)), "blocks": {"attention_norm": {"scale": jnp.ones((3, 2))},
                                                      "attention": {"bq": jnp.ones((3, 2, 2))},
                                                      "mlp": {"w_up": jnp.ones((3, 2, 2))}}}
  assert optim.decay_mask(params) == {"embedding": True, "blocks": {"attention_norm": {"scale": False},
                                                                     "attention": {"bq": False},
                                                                     "mlp": {"w_up": True}}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  optimizer, _ = optim.make(optim_config(learning_rate=1.0, schedule="constant", warmup_steps=0, weight_decay=0.5,
                                         clip_norm=0.0), 10)
  updates, _ = optimizer.update(zeros, optimizer.init(params), params)
  assert float(jnp.abs(updates["blocks"]["attention_norm"]["scale"]).max()) == 0.0
  np.testing.assert_allclose(updates["embedding"], -0.5)


def test_clipping_rescales_gradients_to_the_global_norm_and_adafactor_runs():
  grads = {"w": jnp.full((4, 4), 100.0)}
  params = {"w": jnp.ones((4, 4))}
  # A large eps makes Adam's update depend on the gradient's scale, so clipping shows in it.
  adam = dict(name="adamw", learning_rate=1.0, schedule="constant", warmup_steps=0, weight_decay=0.0, eps=1.0)
  clipped_optimizer, _ = optim.make(optim_config(**adam, clip_norm=1.0), 10)
  plain_optimizer, _ = optim.make(optim_config(**adam, clip_norm=0.0), 10)
  clipped_grads = jax.tree.map(lambda g: g / float(optax.global_norm(grads)), grads)
  updates, _ = clipped_optimizer.update(grads, clipped_optimizer.init(params), params)
  expected, _ = plain_optimizer.update(clipped_grads, plain_optimizer.init(params), params)
  np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
  assert float(jnp.abs(expected["w"]).max()) < 0.5
  adafactor, _ = optim.make(optim_config(name="adafactor", warmup_steps=0), 10)
  updates, _ = adafactor.update(grads, adafactor.init(params), params)
  assert float(jnp.abs(updates["w"]).max()) > 0


def test_unknown_choices_are_named():
  with pytest.raises(ValueError, match="optim.name='sgd'"):
    optim.make(optim_config(name="sgd"), 10)
  with pytest.raises(ValueError, match="optim.schedule='step'"):
    optim.make(optim_config(schedule="step"), 10)
