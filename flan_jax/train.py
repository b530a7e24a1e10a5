"""Training: the train state, the sharded train step and (below) the main loop.

    python -m flan_jax.train --config configs/tiny.py
"""

import copy
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow (under TFDS) logs its CPU features at INFO

import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import app, flags, logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

from flan_jax import (checkpoint, commands, distributed, dpo, dpo_reference, hardware, lora,
                      metric_writer, optim, sharding, workdirs)
from flan_jax import loss as losses
from flan_jax.data import packing, pipeline, prepared, render, vocab
from flan_jax.evaluators import common
from flan_jax.model import Decoder, ModelConfig, forward, from_config, train_flops_per_token

@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # what the optimiser trains: all parameters, or only the adapters with LoRA
  frozen: Any  # not trained, not checkpointed: LoRA's base weights, DPO's frozen reference copy, or {}
  opt_state: Any
  examples_seen: jax.Array  # packed examples trained on, for the logs


def _trained_and_frozen(params, model: Decoder, frozen_copy: bool):
  if model.cfg.lora_rank:
    return lora.split(params)
  return params, params if frozen_copy else {}


def state_shapes(model: Decoder, optimizer, mesh, logical_rules, frozen_copy: bool = False):
  """(TrainState of ShapeDtypeStructs, TrainState of NamedShardings), computed without initialising;
  with `frozen_copy` (full fine-tuning only), `frozen` holds a second copy of the parameters."""
  params, frozen = _trained_and_frozen(sharding.param_shapes(model, mesh, logical_rules), model,
                                       frozen_copy)
  shardings_of = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  opt_state = jax.eval_shape(optimizer.init, params)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  shapes = TrainState(step=scalar, params=params, frozen=frozen, opt_state=opt_state, examples_seen=scalar)
  shardings = TrainState(step=sharding.replicated(mesh), params=shardings_of(params), frozen=shardings_of(frozen),
                         opt_state=sharding.optimizer_shardings(opt_state, params, shardings_of(params), mesh),
                         examples_seen=sharding.replicated(mesh))
  return shapes, shardings


def init_state(model: Decoder, optimizer, mesh, shardings, rng) -> TrainState:
  """A fresh state, parameters initialised directly into their shards (and copied into `frozen`
  where `shardings` has a frozen copy)."""
  frozen_copy = not model.cfg.lora_rank and bool(jax.tree.leaves(shardings.frozen))

  def create(key):
    params, frozen = _trained_and_frozen(nn.unbox(sharding.init_params(model, mesh, key)), model,
                                         frozen_copy)
    zero = jnp.int32(0)
    return TrainState(step=zero, params=params, frozen=frozen, opt_state=optimizer.init(params), examples_seen=zero)
  return jax.jit(create, out_shardings=shardings)(rng)


def with_pretrained(state: TrainState, shapes: TrainState, path: str, fresh: bool) -> TrainState:
  """The state with a pretrained checkpoint's parameters (e.g. from flan_jax.convert) where it
  starts from them: the trained ones if `fresh` (with LoRA the adapters stay as initialised), and
  the frozen ones, never checkpointed, at every start."""
  if jax.tree.leaves(shapes.frozen):
    state = state.replace(frozen=checkpoint.restore_pretrained(path, shapes.frozen))
  if fresh and not jax.tree.leaves(lora.split(shapes.params)[0]):  # full fine-tuning
    params = (jax.tree.map(jnp.copy, state.frozen) if jax.tree.leaves(shapes.frozen)  # DPO's copy
              else checkpoint.restore_pretrained(path, shapes.params))
    state = state.replace(params=params)
  return state


LOSS_KINDS = ("cross_entropy", "dpo")


def loss_fn(params, frozen, model: Decoder, batch, normalizer, loss_config, dropout_rng):
  """(loss, metric sums) of a batch or microbatch. Cross-entropy: `normalizer` is the per-token
  weights (losses.token_weights) and the sums hold the weighted nll; DPO: `normalizer` is the
  whole batch's dpo.totals and the sums are dpo.loss's, the reference's log-probabilities the
  batch's precomputed ones or those of `frozen` (LoRA's base without the adapters, or the frozen
  copy; see dpo_reference.py)."""
  rngs = {"dropout": dropout_rng} if model.cfg.lora_dropout else {}
  hidden, unembedding = forward(model, lora.combine(params, frozen), batch, rngs)
  settings = dict(chunk_len=loss_config.chunk_len, dtype=model.cfg.dtype)
  if loss_config.kind == "dpo":
    policy = -losses.fused_token_nll(hidden, unembedding, batch["targets"], **settings)
    if loss_config.dpo_reference == "precomputed":
      reference = batch["reference_log_probs"]
    else:  # `frozen`: LoRA's base alone (its adapters off), or the frozen copy
      reference = dpo_reference.token_log_probs(lora.without_adapters(model), frozen, batch,
                                                chunk_len=loss_config.chunk_len)
    return dpo.loss(policy, reference, batch, normalizer, beta=loss_config.dpo_beta,
                    variant=loss_config.dpo_variant, length_normalize=loss_config.dpo_length_normalize,
                    sft_weight=loss_config.dpo_sft_weight)
  loss, nll = losses.fused_cross_entropy(hidden, unembedding, batch["targets"], normalizer, **settings,
                                         z_loss=loss_config.z_loss, label_smoothing=loss_config.label_smoothing)
  return loss, {"nll": nll}


def train_step(state: TrainState, batch, *, model, optimizer, schedule, loss_config, microbatches, mesh,
               skip_nonfinite, seed=0):
  """One optimiser update from a packed batch of [batch, length] arrays, with metrics.

  With skip_nonfinite, an update whose loss or gradients are NaN or infinite is dropped
  (the state stays as it was, but for the step count) and counted in metrics["skipped"].
  """
  b, length = batch["targets"].shape
  # Normalise over the whole batch first, so that k microbatches sum to exactly the big batch's loss.
  dpo_loss = loss_config.kind == "dpo"
  if dpo_loss:
    normalizer = dpo.totals(batch)  # scalars: every microbatch takes them whole
  else:
    normalizer = losses.token_weights(batch["loss_weights"], batch["segment_ids"], loss_config.normalization,
                                      constant=b * length)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)
  if microbatches == 1:
    (loss, sums), grads = grad_fn(state.params, state.frozen, model, batch, normalizer, loss_config, dropout_rng)
  else:
    def split(x):  # [b, ...] -> [k, b/k, ...]; microbatch j holds rows j, j+k, ..., so rows stay on their device.
      x = jnp.swapaxes(x.reshape(b // microbatches, microbatches, *x.shape[1:]), 0, 1)
      return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, sharding.BATCH_AXES)))

    def accumulate(totals, micro):
      micro_batch, micro_weights, index = micro  # micro_weights: None for DPO
      (loss, sums), grads = grad_fn(state.params, state.frozen, model, micro_batch,
                                    normalizer if micro_weights is None else micro_weights, loss_config,
                                    jax.random.fold_in(dropout_rng, index))
      return jax.tree.map(jnp.add, totals, (loss, sums, grads)), None

    sum_keys = (*dpo.METRICS, "nll") if dpo_loss else ("nll",)
    zeros = (jnp.float32(0.0), {k: jnp.float32(0.0) for k in sum_keys}, jax.tree.map(jnp.zeros_like, state.params))
    micro = (jax.tree.map(split, batch), None if dpo_loss else split(normalizer), jnp.arange(microbatches))
    (loss, sums, grads), _ = jax.lax.scan(accumulate, zeros, micro)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  skip = jnp.logical_not(jnp.isfinite(loss) & jnp.isfinite(grad_norm)) & skip_nonfinite
  keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, old)
  # Segment ids run 1..n in each row; a preference pair is two of them.
  examples = normalizer["pairs"] if dpo_loss else jnp.sum(jnp.max(batch["segment_ids"], axis=1))
  metrics = {
      "loss": loss,
      "nll": sums["nll"] / jnp.maximum(normalizer["chosen_tokens"], 1) if dpo_loss else sums["nll"],
      **({k: sums[k] / jnp.maximum(normalizer["pairs"], 1) for k in dpo.METRICS} if dpo_loss else {}),
      "grad_norm": grad_norm,
      "learning_rate": schedule(optim.applied_updates(state.opt_state, state.step)),  # the rate this update used
      "target_tokens": jnp.sum(batch["loss_weights"]),
      "skipped": skip.astype(jnp.int32),
  }
  return TrainState(step=state.step + 1, params=keep_old(params, state.params), frozen=state.frozen,
                    opt_state=keep_old(opt_state, state.opt_state),
                    examples_seen=state.examples_seen + jnp.where(skip, 0, examples)), metrics


def batch_keys(config) -> tuple[str, ...]:
  """What the train step's batches hold: packed examples', or with loss.kind="dpo" packed pairs'."""
  return packing.PAIR_BATCH_KEYS if config.loss.kind == "dpo" else packing.BATCH_KEYS


def loss_settings(config):
  """config.loss with loss.dpo_reference resolved (dpo_reference.resolve) for a DPO run."""
  if config.loss.kind != "dpo":
    return config.loss
  loss_config = copy.deepcopy(config.loss)
  loss_config.dpo_reference = dpo_reference.resolve(loss_config.dpo_reference,
                                                    config.model.lora_rank)
  return loss_config


def frozen_copy(config) -> bool:
  """Whether the train state holds DPO's frozen copy of the parameters (state_shapes)."""
  return loss_settings(config).get("dpo_reference") == "frozen_copy"


def flops_per_token(config) -> float:
  """Model FLOPs a train step spends per token (train_flops_per_token), and with a DPO reference
  that runs in the step (adapters_off, frozen_copy) its forward pass too (a third of training's)."""
  per_token = train_flops_per_token(ModelConfig(**config.model), config.data.seq_len)
  in_step = loss_settings(config).get("dpo_reference") in ("adapters_off", "frozen_copy")
  return per_token * (4 / 3 if in_step else 1)


def jit_train_step(model, optimizer, schedule, config, mesh, state_shardings):
  """train_step jitted with explicit shardings; the old state's buffers are donated to the new one."""
  sharding.check_batch(config.data.batch_size, config.train.microbatches, mesh)
  step = functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                           loss_config=loss_settings(config),
                           microbatches=config.train.microbatches, mesh=mesh,
                           skip_nonfinite=config.train.skip_nonfinite, seed=config.seed)
  batch_shardings = {key: sharding.batch_sharding(mesh) for key in batch_keys(config)}
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def train_and_evaluate(config, workdir: str):
  """Trains config.train.steps steps into `workdir` (resuming from its newest checkpoint), running
  the evaluators of config.evals as they are due: config -> mesh -> data -> state -> evaluators ->
  loop. Joining the multi-process runtime, if any, is the caller's (main's) and comes first."""
  config = copy.deepcopy(config)
  requested_dtype, config.model.dtype = config.model.dtype, hardware.compute_dtype(config.model.dtype)  # as config.json records
  config.loss = loss_settings(config)  # loss.dpo_reference resolved, as config.json records

  # Mesh, and the batch sizes it divides (before anything trains).
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules(config.sharding_rules)
  sharding.resolve_batch_size(config, mesh)
  sharding.check_process_rows(mesh, config.data.batch_size)
  workdirs.prepare(config, workdir)
  if config.model.lora_rank and not config.train.init_from:
    raise ValueError("model.lora_rank > 0 trains adapters over a pretrained base: set train.init_from to its "
                     "checkpoint (python -m flan_jax.convert import ...)")
  if config.loss.kind not in LOSS_KINDS:
    raise ValueError(f"loss.kind={config.loss.kind!r}: choose from {', '.join(LOSS_KINDS)}")
  if config.loss.kind == "dpo" and not config.train.init_from:
    raise ValueError("loss.kind='dpo' tunes a trained model, which is also its reference: set "
                     "train.init_from to its checkpoint")

  # Data: this process's rows of every batch.
  tokenizer_cache = (prepared.tokenizer_dir(config.data.prepared) if config.data.prepared
                     else workdirs.tokenizer_dir(workdir))
  if jax.process_index() == 0:  # trains and caches the tokenizer if needed, and records it; the others then load it
    workdirs.check_tokenizer(workdir, vocab.get_tokenizer(config.data, tokenizer_cache), write=True)
  multihost_utils.sync_global_devices("tokenizer ready")
  tokenizer = vocab.get_tokenizer(config.data, tokenizer_cache)
  workdirs.check_tokenizer(workdir, tokenizer, write=False)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
                     f"{tokenizer.vocab_size}")
  stats = render.Stats()
  stream = example_stream(config, workdir, tokenizer, stats, mesh)
  data_iterator = iter(pipeline.pack_batches(config.data, stream, stats, seed=config.seed,
                                             process_index=jax.process_index(),
                                             process_count=jax.process_count(),
                                             pairs=config.loss.kind == "dpo"))

  # Model and state: the newest readable checkpoint, else fresh (optionally with init_from's parameters).
  model = from_config(config.model)
  optimizer, schedule = optim.make(config.optim, config.train.steps)
  checkpoints = checkpoint.manager(workdir, config.train.keep_checkpoints)
  with sharding.context(mesh, rules):
    shapes, shardings = state_shapes(model, optimizer, mesh, rules, frozen_copy=frozen_copy(config))
    state = checkpoint.restore_latest(checkpoints, checkpoint.abstract(shapes, shardings), data_iterator,
                                      config.data)
    fresh = state is None
    if fresh:
      state = init_state(model, optimizer, mesh, shardings, jax.random.key(config.seed))
    if config.train.init_from:
      state = with_pretrained(state, shapes, config.train.init_from, fresh)
    step_fn = jit_train_step(model, optimizer, schedule, config, mesh, shardings)

    first_step = int(state.step)
    if jax.process_index() == 0:
      print(f"training steps {first_step}..{config.train.steps} in {workdir} on mesh {dict(mesh.shape)}, "
            f"matmuls in {config.model.dtype}" + (" (model.dtype=auto)" if requested_dtype == "auto" else ""), flush=True)
    writer = metric_writer.Writer(workdir, config.train.steps, first_step)

    # Evaluators: the starting parameters' (an imported model's) as step 0, and a finished run's
    # final ones that did not complete.
    evaluators = common.from_config(config.evals, common.Context(config, model, tokenizer, mesh, workdir))
    last = config.train.steps
    if first_step == 0:
      run_evaluators([e for e in evaluators if e.due(0, last)], state, 0, writer)
    if first_step == last:
      run_evaluators([e for e in evaluators if e.due(last, last) and not e.evaluator.written(last)], state, last,
                     writer)
    train_loop(config, state, step_fn, data_iterator, checkpoints, writer, mesh, evaluators, stats)
  data_iterator.close()


def example_stream(config, workdir: str, tokenizer, stats: render.Stats, mesh=None):
  """The run's example stream: data.prepared's shards (checked against the run's data config,
  tokenizer and evaluation sets; no scan), else the mixture resolved (decontamination and
  deduplication's scan) by process 0 into `<workdir>/data_scan/<checksum of its inputs>.npz`,
  where a restart finds it, and rendered as it streams; for DPO with a precomputed reference, its
  pairs carry the starting model's log-probabilities (dpo_reference.py), scored on `mesh`."""
  if config.data.prepared:
    if config.loss.kind == "dpo":
      raise ValueError("data.prepared holds single examples; loss.kind='dpo' reads preference pairs as they "
                       "stream (prepared pairs are not supported yet)")
    manifest = prepared.read_manifest(config.data.prepared)
    prepared.check(manifest, config.data.prepared, config, tokenizer)
    stats.mixture_skipped = manifest["mixture"]["skipped_row_count"]
    logging.info("data: %d prepared examples in %s", manifest["examples"], config.data.prepared)
    return prepared.examples(config.data.prepared, manifest, stats)
  path = epath.Path(workdir) / "data_scan" / f"{pipeline.scan_checksum(config.data)}.npz"
  if jax.process_index() == 0 and not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    pipeline.write_mixture(pipeline.resolve_mixture(config.data), str(path))
  multihost_utils.sync_global_devices("data scan written")
  mix = pipeline.read_mixture(config.data, str(path))
  pipeline.check_preference_tasks(mix, pairs=config.loss.kind == "dpo")
  for name, found in (mix.contamination or {}).get("training_tasks", {}).items():
    logging.info("decontamination (%s): %d of %d training examples of %s overlap evaluation instances",
                 config.data.decontamination.mode, found["flagged"], found["of"], name)
  for name, found in mix.duplicates.items():
    logging.info("deduplication: dropped %d of %d training examples of %s", found["dropped"], found["of"], name)
  pipeline.check_seq_len(config.data, mix, tokenizer, seed=config.seed)
  stats.mixture_skipped = len(mix.skipped_rows)
  reference = None
  if config.loss.kind == "dpo" and config.loss.dpo_reference == "precomputed":
    model, rules = from_config(config.model), sharding.rules(config.sharding_rules)
    with sharding.context(mesh, rules):
      reference = dpo_reference.load_or_compute(config, workdir, mix, tokenizer, model,
                                                sharding.param_shapes(model, mesh, rules), mesh)
  return pipeline.examples(config.data, mix, tokenizer, stats, seed=config.seed,
                           reference=reference)


def run_evaluators(evaluators, state: TrainState, step: int, writer):
  """Runs each of `evaluators` (evaluators.common.Scheduled) on the state's parameters; their
  headline metrics go to the logs as one record of `step`."""
  if evaluators:
    params = lora.combine(state.params, state.frozen)
    writer.write_eval(step, {k: v for e in evaluators for k, v in e.evaluator.run(params, step).items()})


def main(argv):
  commands.start(argv)
  config = flags.FLAGS.config
  distributed.initialize(config.distributed)
  train_and_evaluate(config, flags.FLAGS.workdir or workdirs.default(flags.FLAGS["config"].config_filename))


class Preemption:
  """Whether to save and stop after a step, decided at the same step by every process; a context
  manager around the loop.

  Under jax.distributed, JAX's preemption service catches SIGTERM (on any one process) and agrees
  on a step with the others; a Python handler would replace its own. A lone process catches
  SIGTERM here while the loop runs, and gives it back to the caller's handler after.
  """

  def __init__(self, checkpoints):
    self.checkpoints, self.signalled, self._previous = checkpoints, [], None

  def __enter__(self):
    if not jax.distributed.is_initialized():
      self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.signalled.append(signum))
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def __call__(self, step: int) -> bool:
    return bool(self.signalled) or self.checkpoints.reached_preemption(step)


def device_batches(data_iterator, mesh):
  """Yields (the global batch on device, the data position after it) for each of the iterator's
  process-local batches; the position is what a checkpoint of that step records."""
  batch_sharding = sharding.batch_sharding(mesh)
  for local in data_iterator:
    yield ({k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()},
           data_iterator.get_state())


@jax.jit
def _tally(tally, metrics, step):
  """Device-side counts between host checks: the first step whose loss or gradient norm was not
  finite (0: none), and how many updates were skipped."""
  bad = jnp.logical_not(jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]))
  return {"first_nonfinite": jnp.where((tally["first_nonfinite"] == 0) & bad, step, tally["first_nonfinite"]),
          "skipped": tally["skipped"] + metrics["skipped"]}


def train_loop(config, state, step_fn, data_iterator, checkpoints, writer, mesh, evaluators, stats):
  """Steps to config.train.steps, logging, checkpointing, running the evaluators that are due, and
  stopping cleanly on SIGTERM or NaN. `stats`: the data pipeline's counts, logged with the metrics.

  The host never waits for the device in between: the next batch is built and sent while a step
  runs, and metrics are fetched only where the host must decide (log, checkpoint, evaluation and
  preemption steps). A NaN is therefore reported as having happened between two such steps.
  """
  with Preemption(checkpoints) as preempted:
    tokens_per_step = config.data.batch_size * config.data.seq_len
    flops_per_step = tokens_per_step * flops_per_token(config)
    hardware.measured_peak_flops(config.model.dtype)  # the MFU denominator on CPUs, measured before the clock starts

    fresh_tally = jax.jit(lambda: {"first_nonfinite": jnp.int32(0), "skipped": jnp.int32(0)},
                          out_shardings=sharding.replicated(mesh))
    batches = device_batches(data_iterator, mesh)

    checked_step = int(state.step)
    last_log_time, last_log_step = time.time(), checked_step
    tally = fresh_tally()
    batch, data_state = next(batches)
    for step in range(int(state.step), config.train.steps):
      done = step + 1
      state, step_metrics = step_fn(state, batch)
      tally = _tally(tally, step_metrics, state.step)
      batch_data_state = data_state
      if done < config.train.steps:
        batch, data_state = next(batches)  # while the step runs
      log = done % config.train.log_every == 0 or done == config.train.steps
      save = done % config.train.checkpoint_every == 0 or done == config.train.steps
      due = [e for e in evaluators if e.due(done, config.train.steps)]
      stop = preempted(done)
      if not (log or save or due or stop):
        continue
      # A host sync point: nothing is saved, logged or evaluated past a non-finite step.
      step_metrics, counts = jax.device_get((step_metrics, tally))
      if counts["first_nonfinite"] and not config.train.skip_nonfinite:
        checkpoints.wait_until_finished()
        raise FloatingPointError(f"the loss or gradient norm became NaN or infinite between steps {checked_step} and "
                                 f"{done} (first at step {counts['first_nonfinite']}); the last good checkpoint is kept "
                                 f"in {checkpoints.directory} (train.skip_nonfinite=True skips such updates instead)")
      checked_step = done
      if log:
        seconds = time.time() - last_log_time
        rate = tokens_per_step * (done - last_log_step) / seconds
        writer.write(done, {**{k: v.item() for k, v in step_metrics.items()}, "skipped": int(counts["skipped"]),
                            "tokens_per_s": rate,
                            **hardware.mfu(rate / tokens_per_step * flops_per_step, jax.devices()[0], config.model.dtype,
                                           jax.device_count()),
                            "examples_seen": int(state.examples_seen), **stats.counts()})
        last_log_time, last_log_step = time.time(), done
        tally = fresh_tally()
      if stop:
        checkpoint.save(checkpoints, done, state, batch_data_state, config.data.shards)
        checkpoints.wait_until_finished()
        logging.warning("preempted: saved step %d, exiting", done)
        return
      if save:
        checkpoint.save(checkpoints, done, state, batch_data_state, config.data.shards)
      run_evaluators(due, state, done, writer)
    checkpoints.wait_until_finished()


if __name__ == "__main__":
  # Defined here, not at import, so that tests and tools can import this module beside other CLIs.
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:arg].", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory; default workdirs/<config name>[_<arg>].")
  app.run(main)
