"""Training: the train state, the sharded train step and (below) the main loop.

    python -m flan_jax.train --config configs/tiny.py
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from flan_jax import loss as losses
from flan_jax import sharding
from flan_jax.model import Decoder, ModelConfig

BATCH_KEYS = ("inputs", "targets", "loss_weights", "segment_ids", "positions")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_model(model_config) -> Decoder:
  return Decoder(ModelConfig(**model_config))


def init_state(model: Decoder, optimizer, mesh, logical_rules, rng):
  """(state, its shardings): parameters initialised directly into their shards."""
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  dummy = jnp.zeros((rows, 1), jnp.int32)
  init_params = lambda key: model.init(key, dummy, dummy, dummy)["params"]
  boxed = jax.eval_shape(init_params, rng)
  param_shardings = sharding.param_shardings(boxed, mesh, logical_rules)
  abstract_params = sharding.abstract_values(boxed)
  opt_shardings = sharding.optimizer_shardings(jax.eval_shape(optimizer.init, abstract_params), abstract_params,
                                               param_shardings, mesh)
  shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings, opt_state=opt_shardings)

  def create(key):
    params = nn.unbox(init_params(key))
    return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params))

  return jax.jit(create, out_shardings=shardings)(rng), shardings


def loss_fn(params, model: Decoder, batch, weights, loss_config):
  """(weighted loss, weighted nll) of a batch; `weights` from losses.token_weights."""
  variables = {"params": params}
  hidden = model.apply(variables, batch["inputs"], batch["positions"], batch["segment_ids"])
  unembedding = model.apply(variables, method=Decoder.unembedding)
  return losses.fused_cross_entropy(hidden, unembedding, batch["targets"], weights, chunk_len=loss_config.chunk_len,
                                    dtype=model.cfg.dtype, z_loss=loss_config.z_loss,
                                    label_smoothing=loss_config.label_smoothing)


def train_step(state: TrainState, batch, *, model, optimizer, schedule, loss_config, microbatches, mesh):
  """One optimiser update from a packed batch of [batch, length] arrays, with metrics."""
  b, length = batch["targets"].shape
  # Normalise over the whole batch first, so that k microbatches sum to exactly the big batch's loss.
  weights = losses.token_weights(batch["loss_weights"], batch["segment_ids"], loss_config.normalization,
                                 constant=b * length)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (loss, nll), grads = grad_fn(state.params, model, batch, weights, loss_config)
  else:
    def split(x):  # [b, ...] -> [k, b/k, ...]; microbatch j holds rows j, j+k, ..., so rows stay on their device.
      x = jnp.swapaxes(x.reshape(b // microbatches, microbatches, *x.shape[1:]), 0, 1)
      return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, sharding.BATCH_AXES)))

    def accumulate(totals, micro):
      micro_batch, micro_weights = micro
      (loss, nll), grads = grad_fn(state.params, model, micro_batch, micro_weights, loss_config)
      return jax.tree.map(jnp.add, totals, (loss, nll, grads)), None

    zeros = (jnp.float32(0.0), jnp.float32(0.0), jax.tree.map(jnp.zeros_like, state.params))
    (loss, nll, grads), _ = jax.lax.scan(accumulate, zeros, jax.tree.map(split, (batch, weights)))
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "nll": nll,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": schedule(state.step),
      "target_tokens": jnp.sum(batch["loss_weights"]),
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_train_step(model, optimizer, schedule, config, mesh, state_shardings):
  """train_step jitted with explicit shardings; the old state's buffers are donated to the new one."""
  sharding.check_batch(config.data.batch_size, config.train.microbatches, mesh)
  step = functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule, loss_config=config.loss,
                           microbatches=config.train.microbatches, mesh=mesh)
  batch_shardings = {key: sharding.batch_sharding(mesh) for key in BATCH_KEYS}
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
