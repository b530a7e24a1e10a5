"""DPO's reference log-probabilities for full fine-tuning, computed once before training.

loss.dpo_reference says where the reference model's log-probabilities come from: "adapters_off"
(LoRA's frozen base, run in the step without the adapters), "precomputed" (here), "frozen_copy"
(full fine-tuning with a second, frozen copy of the starting parameters in the train state's
`frozen`, run in the step: twice the parameter memory, no pass before training), or "auto".

With loss.dpo_reference="precomputed" (what "auto" means without LoRA), the run's starting model
(train.init_from's parameters) scores every training pair as the pipeline renders and cuts it,
before the first step, and the run stores the sums in `<workdir>/dpo_reference/<checksum>.npz`, the
checksum being of everything they are a function of: the data scan's checksum (records, held-out
and dropped rows), data.seq_len, data.template, the tokenizer, config.model and train.init_from. A
restarted or resumed run reads that file; one whose inputs changed finds no file of their checksum
and computes it anew. The train step then holds one model, and its reference costs nothing per
step.

Stored per training task: float32 [records, 2], each row's (chosen, rejected) answer-token
log-probabilities summed, NaN for the rows not trained on. The pipeline carries each pair's two sums
on its answers' last weighted tokens (packing's `reference_log_probs`), where
dpo.sequence_log_probs adds them back exactly.
"""

import functools
import hashlib
import json

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from flan_jax import checkpoint, dpo, sharding
from flan_jax import loss as losses
from flan_jax.data import packing, pipeline, render, tokenizer as tokenizer_lib
from flan_jax.model import Decoder, forward

KINDS = ("auto", "adapters_off", "precomputed", "frozen_copy")


def resolve(kind: str, lora_rank: int) -> str:
  """loss.dpo_reference made explicit: "auto" is LoRA's base (the adapters off, free) with LoRA,
  else "precomputed". ValueError names the key for a kind that cannot be."""
  if kind not in KINDS:
    raise ValueError(f"loss.dpo_reference={kind!r}: choose from {', '.join(KINDS)}")
  if kind == "auto":
    return "adapters_off" if lora_rank else "precomputed"
  if kind == "adapters_off" and not lora_rank:
    raise ValueError("loss.dpo_reference='adapters_off' needs LoRA (model.lora_rank > 0); full "
                     "fine-tuning takes 'precomputed' or 'frozen_copy'")
  if kind == "frozen_copy" and lora_rank:
    raise ValueError("loss.dpo_reference='frozen_copy' is for full fine-tuning: under LoRA the "
                     "frozen base is the reference ('adapters_off'), with no copy")
  return kind


def check_rendering(data_cfg):
  """Raises unless every pair renders one way (no drawn preamble or format), as the stored sums
  assume: a pair is looked up by its row."""
  if data_cfg.template.preamble_rate or len(data_cfg.template.format_mix) > 1:
    raise ValueError("loss.dpo_reference='precomputed' stores one reference per pair, so pairs "
                     "must render one way: set data.template.preamble_rate=0 and at most one "
                     "data.template.format_mix entry")


def token_log_probs(model: Decoder, params, batch, *, chunk_len: int):
  """[b, l] log-probabilities of a batch's targets, logits built one chunk at a time."""
  nll, _ = losses.token_nll(*forward(model, params, batch), batch["targets"],
                            chunk_len=chunk_len, dtype=model.cfg.dtype)
  return -nll


def checksum(config, tokenizer) -> str:
  """sha256 of what a run's stored reference sums are a function of (see the module docstring)."""
  data = pipeline.data_settings(config.data)
  inputs = {
      "scan": pipeline.scan_checksum(config.data),
      "tokenizer": tokenizer_lib.checksum(tokenizer),
      "data": {key: data[key] for key in ("seq_len", "template")},
      "model": json.loads(config.model.to_json_best_effort(sort_keys=True)),
      "init_from": config.train.init_from,
  }
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def load_or_compute(config, workdir: str, mix: pipeline.Mixture, tokenizer, model: Decoder,
                    param_shapes, mesh) -> dict[str, np.ndarray]:
  """The run's reference sums (see the module docstring): read from its file, else computed with
  train.init_from's parameters (placed like `param_shapes`) by every process and written by process
  0. Call under sharding.context(mesh, rules)."""
  check_rendering(config.data)
  path = epath.Path(workdir) / "dpo_reference" / f"{checksum(config, tokenizer)}.npz"
  if not path.exists():
    params = checkpoint.restore_pretrained(config.train.init_from, param_shapes)
    sums = compute(config, mix, tokenizer, model, params, mesh)
    if jax.process_index() == 0:
      path.parent.mkdir(parents=True, exist_ok=True)
      with path.open("wb") as f:
        np.savez(f, **sums)
    multihost_utils.sync_global_devices("dpo reference written")
  with path.open("rb") as f:
    saved = np.load(f)
    sums = {t.name: saved[t.name] for t in mix.train}
  logging.info("DPO reference: %d pairs' log-probabilities from %s",
               sum(int(np.sum(~np.isnan(s[:, 0]))) for s in sums.values()), path)
  return sums


def compute(config, mix: pipeline.Mixture, tokenizer, model: Decoder, params,
            mesh) -> dict[str, np.ndarray]:
  """Per training task, float32 [records, 2]: the (chosen, rejected) answer log-probability sums
  of each row trained on under `params`, NaN elsewhere. Rows of data.batch_size at a time, every
  process giving its block of each batch's rows, as in training."""
  renderer = render.Renderer(config.data, tokenizer, mix.train, render.Stats(), kept=mix.kept)
  keys, pairs = [], []
  for task in mix.train:
    records = task.source(task.splits[0])
    for index in map(int, mix.kept[task.name]):
      features = renderer((task.name, index, records[index]), np.random.default_rng(0))
      if features is not None:  # skipped bad records and pairs that do not fit are not trained on
        keys.append((task.name, index))
        pairs.append(features)
  rows = packing.pack_in_order(pairs, config.data.seq_len)
  logging.info("DPO reference: scoring %d training pairs (%d rows) with train.init_from's "
               "parameters", len(pairs), len(rows))
  b = config.data.batch_size
  per_process = b // jax.process_count()
  score = jax.jit(functools.partial(_sums, model=model, chunk_len=config.loss.chunk_len),
                  out_shardings=sharding.replicated(mesh))
  sums = {t.name: np.full((len(t.source(t.splits[0])), 2), np.nan, np.float32) for t in mix.train}
  empty = {k: np.zeros_like(v) for k, v in rows[0][0].items()} if rows else {}
  for start in range(0, len(rows), b):
    batch = [row for row, _ in rows[start:start + b]]
    batch += [empty] * (b - len(batch))
    first = jax.process_index() * per_process
    local = {k: np.stack([row[k] for row in batch[first:first + per_process]]) for k in empty}
    chosen, rejected = jax.device_get(score(params, {
        k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), v)
        for k, v in local.items()}))
    for r, (_, members) in enumerate(rows[start:start + b]):
      for slot, member in enumerate(members):
        name, index = keys[member]
        sums[name][index] = chosen[r, slot], rejected[r, slot]
  return sums


def _sums(params, batch, *, model: Decoder, chunk_len: int):
  chosen, rejected, _, _ = dpo.sequence_log_probs(
      token_log_probs(model, params, batch, chunk_len=chunk_len), batch)
  return chosen, rejected
