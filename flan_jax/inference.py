"""A trained or imported model answering: loading it sharded over the devices, answering
conversations, continuing token prompts, choosing among labels, and reading JSONL prompt files. What
generate, judge and self_instruct are built on."""

import dataclasses
import json
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from flan_jax import checkpoint, decode, scoring, sharding, workdirs
from flan_jax.data import vocab
from flan_jax.data import tokenizer as tokenizer_lib
from flan_jax.model import Decoder, from_config


SCORE_CHUNK_LEN = 128  # positions whose logits are built at once when scoring


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model ready to answer: parameters split over the devices of `mesh`, its tokenizer and its
  instruction format."""
  params: Any
  model: Decoder
  tokenizer: tokenizer_lib.Tokenizer
  fmt: str  # the output format user turns are rendered in (templates.FORMATS or chat_template)
  step: int
  path: str
  mesh: Any


def load(*, workdir: str = "", checkpoint_dir: str = "", step: int | None = None) -> LoadedModel:
  """A training run (its workdir) or an imported checkpoint (flan_jax.convert import), exactly one."""
  if bool(workdir) == bool(checkpoint_dir):
    raise ValueError("give one of a training run's workdir or an imported checkpoint")
  if checkpoint_dir:
    info = checkpoint.read_info(checkpoint_dir)
    fields, fmt = info["model"], info["chat_format"]
    tokenizer = tokenizer_lib.load(str(epath.Path(checkpoint_dir) / "hf"))
    step, params, mesh = checkpoint.load_for_inference(fields, checkpoint_dir=checkpoint_dir, step=step)
  else:
    config_path = epath.Path(workdir) / "config.json"
    if not config_path.exists():
      raise FileNotFoundError(f"{config_path} does not exist: expected a training run's workdir")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    fields, fmt = config.model.to_dict(), config.data.template.format
    tokenizer = vocab.get_tokenizer(config.data, workdirs.tokenizer_dir(workdir))
    step, params, mesh = checkpoint.load_for_inference(fields, workdir=workdir, init_from=config.train.init_from,
                                                       step=step)
  return LoadedModel(params, from_config(fields), tokenizer, fmt, step, checkpoint_dir or workdir, mesh)


def answer(loaded: LoadedModel, conversations, *, max_new_tokens: int, batch_size: int = 8, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, rng=None, stops=None) -> list[str]:
  """Each conversation ([(role, text)], awaiting the assistant) answered in the model's format."""
  prompts = [loaded.tokenizer.generation_prompt(c, loaded.fmt) for c in conversations]
  return continue_texts(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        temperature=temperature, top_k=top_k, top_p=top_p, rng=rng, stops=stops)[0]


def continue_texts(loaded: LoadedModel, prompts, *, max_new_tokens: int, batch_size: int = 8,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None, stops=None):
  """(texts, cut short) for token-id prompts: each continuation's text (stripped), and whether it
  reached max_new_tokens without a stop id or stop string. `stops`: per prompt, the strings its
  text ends before (the first found)."""
  outputs = _generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
  texts, cut = [], []
  for output, row_stops in zip(outputs, stops or [()] * len(prompts), strict=True):
    text, stopped = cut_at_stop(loaded.tokenizer.decode(output.tolist()), row_stops)
    texts.append(text.strip())
    cut.append(len(output) == max_new_tokens and not stopped)
  return texts, cut


def evaluated_continuations(loaded: LoadedModel, prompts, *, max_new_tokens: int, batch_size: int = 8,
                            temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None,
                            stops=None) -> list[str]:
  """Continuations of token-id prompts as evaluation harnesses read them: decoded as transformers
  decodes with skip_special_tokens (whitespace kept), each cut before its first stop string
  (`stops`: per prompt)."""
  outputs = _generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
  return [cut_at_stop(loaded.tokenizer.raw_decode(output.tolist(), skip_special_tokens=True), row_stops)[0]
          for output, row_stops in zip(outputs, stops or [()] * len(prompts), strict=True)]


def _generate(loaded: LoadedModel, prompts, *, max_new_tokens: int, batch_size: int, **sampling):
  """decode.generate on the loaded model: token ids per prompt, cut before the first stop id."""
  return decode.generate(loaded.params, loaded.model, prompts, max_new_tokens=max_new_tokens,
                         stop_ids=loaded.tokenizer.stop_ids, pad_id=loaded.tokenizer.pad_id,
                         bucket=scoring.LENGTH_BUCKET, batch_size=min(batch_size, len(prompts)),
                         **sampling)


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
  """(`text` before the earliest occurrence of any of `stops`, whether one occurred)."""
  ends = [i for i in (text.find(s) for s in stops if s) if i >= 0]
  return (text[:min(ends)], True) if ends else (text, False)


def choose(loaded: LoadedModel, prompts, labels, *, batch_size: int = 8) -> np.ndarray:
  """[len(prompts), len(labels)] log-probabilities of each label text as the continuation of each
  token-id prompt (a label of several tokens: their sum)."""
  label_ids = [np.asarray(loaded.tokenizer.encode(label)) for label in labels]
  requests = [(prompt, [(ids, np.ones(len(ids))) for ids in label_ids]) for prompt in prompts]
  scores, _ = score(loaded, requests, batch_size=batch_size,
                    seq_len=max(len(p) for p in prompts) + max(map(len, label_ids)))
  return np.stack(scores)


def score(loaded: LoadedModel, requests, *, batch_size: int, seq_len: int):
  """scoring.score_continuations on the loaded model, in batches of `batch_size` rounded up to whole
  rows per device: per request of (prompt ids, [(continuation ids, weights)]), each continuation's
  log-likelihood and whether each of its tokens is the most likely one."""
  mesh = loaded.mesh
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  with sharding.context(mesh, sharding.rules("fsdp")):
    return scoring.score_continuations(loaded.params, loaded.model, requests,
                                       batch_size=-(-batch_size // shards) * shards, seq_len=seq_len,
                                       chunk_len=SCORE_CHUNK_LEN, mesh=mesh)


def read_jsonl(path) -> list[tuple[dict, str]]:
  """[(row, "file:line")] of a JSONL file's objects (blank lines skipped); anything else is an error
  naming the file and line."""
  rows = []
  for number, line in enumerate(epath.Path(path).read_text().splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(row, dict):
      raise ValueError(f"{where}: expected a JSON object")
    rows.append((row, where))
  return rows


def read_prompts(path: str) -> list[dict]:
  """JSONL rows, each with a non-empty string "prompt" (and if it has "stop", a list of strings);
  errors name the file and line."""
  rows = []
  for row, where in read_jsonl(path):
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
      raise ValueError(f"{where}: expected an object with a non-empty string \"prompt\"")
    stop = row.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
      raise ValueError(f"{where}: \"stop\" must be a list of strings")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no prompts")
  return rows
