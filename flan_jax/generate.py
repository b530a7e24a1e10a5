r"""Ask a trained or imported model something: one prompt, or a file of them.

  python -m flan_jax.generate --workdir workdirs/tiny --prompt "Is this review positive? ..."
  python -m flan_jax.generate --checkpoint CKPT --raw --prompt "The capital of France is" --max_new_tokens 16
  python -m flan_jax.generate --checkpoint CKPT --prompts held_out.jsonl --out answers.jsonl
      [--step N] [--max_new_tokens 64] [--temperature 0] [--top_k 0] [--top_p 1] [--batch_size 8]

The prompt is rendered as a user turn in the run's instruction format
(data.template.format), or for an imported checkpoint (flan_jax.convert) in its
own chat template (its family's format if it ships none); with --raw it is
completed as plain text, with the BOS/EOS its tokenizer adds. Decoding is greedy
unless --temperature is set, with the KV cache, and stops at the tokenizer's stop ids.

--prompts reads JSONL rows with a "prompt" (other fields, such as "category", are
kept) and --out writes each row with this model's "answer": the form flan_jax.judge
compares, so another model's answers file can serve as the prompts.
"""

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath

from flan_jax import checkpoint, commands, convert, decode, evaluate, sharding, workdirs
from flan_jax.data import pipeline
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
    info = convert.read_info(checkpoint_dir)
    fields, fmt = info["model"], info["chat_format"]
    tokenizer = tokenizer_lib.load(str(epath.Path(checkpoint_dir) / "hf"))
    step, params, mesh = checkpoint.load_for_inference(fields, checkpoint_dir=checkpoint_dir, step=step)
  else:
    config_path = epath.Path(workdir) / "config.json"
    if not config_path.exists():
      raise FileNotFoundError(f"{config_path} does not exist: expected a training run's workdir")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    fields, fmt = config.model.to_dict(), config.data.template.format
    tokenizer = pipeline.get_tokenizer(config.data, workdirs.tokenizer_dir(workdir))
    step, params, mesh = checkpoint.load_for_inference(fields, workdir=workdir, init_from=config.train.init_from,
                                                       step=step)
  return LoadedModel(params, from_config(fields), tokenizer, fmt, step, checkpoint_dir or workdir, mesh)


def define_model_flags(role: str):
  """--workdir, --checkpoint and --step: the model a command loads with load_from_flags."""
  flags.DEFINE_string("workdir", None, f"A training run's workdir: {role}.")
  flags.DEFINE_string("checkpoint", None, f"A checkpoint written by flan_jax.convert import: {role}.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")


def load_from_flags() -> LoadedModel:
  flag = flags.FLAGS
  if bool(flag.workdir) == bool(flag.checkpoint):
    raise app.UsageError("give one of --workdir (a training run) or --checkpoint (an imported model)")
  return load(workdir=flag.workdir, checkpoint_dir=flag.checkpoint, step=flag.step)


def answer(loaded: LoadedModel, conversations, *, max_new_tokens: int, batch_size: int = 8, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, rng=None) -> list[str]:
  """Each conversation ([(role, text)], awaiting the assistant) answered in the model's format."""
  prompts = [loaded.tokenizer.generation_prompt(c, loaded.fmt) for c in conversations]
  return continue_texts(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)[0]


def continue_texts(loaded: LoadedModel, prompts, *, max_new_tokens: int, batch_size: int = 8,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None):
  """(texts, cut short) for token-id prompts: each continuation's text (stripped), and whether it
  reached max_new_tokens without a stop id."""
  outputs = decode.generate(loaded.params, loaded.model, prompts, max_new_tokens=max_new_tokens,
                            stop_ids=loaded.tokenizer.stop_ids, pad_id=loaded.tokenizer.pad_id,
                            temperature=temperature, top_k=top_k, top_p=top_p, rng=rng,
                            bucket=evaluate.LENGTH_BUCKET, batch_size=min(batch_size, len(prompts)))
  return ([loaded.tokenizer.decode(o.tolist()).strip() for o in outputs],
          [len(o) == max_new_tokens for o in outputs])


def choose(loaded: LoadedModel, prompts, labels, *, batch_size: int = 8) -> np.ndarray:
  """[len(prompts), len(labels)] log-probabilities of each label text as the continuation of each
  token-id prompt (a label of several tokens: their sum)."""
  label_ids = [np.asarray(loaded.tokenizer.encode(label)) for label in labels]
  requests = [(prompt, [(ids, np.ones(len(ids))) for ids in label_ids]) for prompt in prompts]
  mesh = loaded.mesh
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  with sharding.context(mesh, sharding.rules("fsdp")):
    scores = evaluate.score_continuations(loaded.params, loaded.model, requests,
                                          batch_size=-(-batch_size // shards) * shards,  # whole rows per device
                                          seq_len=max(len(p) for p in prompts) + max(map(len, label_ids)),
                                          chunk_len=SCORE_CHUNK_LEN, mesh=mesh)
  return np.stack(scores)


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
  """JSONL rows, each with a non-empty string "prompt"; errors name the file and line."""
  rows = []
  for row, where in read_jsonl(path):
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
      raise ValueError(f"{where}: expected an object with a non-empty string \"prompt\"")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no prompts")
  return rows


def main(argv):
  commands.start(argv)
  flag = flags.FLAGS
  if bool(flag.prompt) == bool(flag.prompts) or bool(flag.prompts) != bool(flag.out):
    raise app.UsageError("give --prompt, or --prompts with --out")
  loaded = load_from_flags()
  sampling = dict(max_new_tokens=flag.max_new_tokens, batch_size=flag.batch_size, temperature=flag.temperature,
                  top_k=flag.top_k, top_p=flag.top_p, rng=jax.random.key(flag.seed))
  if flag.prompts:
    rows = read_prompts(flag.prompts)
    answers = answer(loaded, [[("user", r["prompt"])] for r in rows], **sampling)
    out = epath.Path(flag.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({**r, "answer": a, "model": loaded.path}) + "\n" for r, a in zip(rows, answers)))
    print(f"[step {loaded.step}] {len(rows)} answers -> {out}")
    return
  if flag.raw:
    [text], _ = continue_texts(loaded, [loaded.tokenizer.encode_text(flag.prompt)], **sampling)
  else:
    [text] = answer(loaded, [[("user", flag.prompt)]], **sampling)
  print(f"[step {loaded.step}] {text}")


if __name__ == "__main__":
  define_model_flags("the model that answers")
  flags.DEFINE_string("prompt", None, "The instruction (and input) to answer, or with --raw the text to continue.")
  flags.DEFINE_string("prompts", None, "A JSONL file of {\"prompt\", ...} rows to answer (with --out).")
  flags.DEFINE_string("out", None, "Where --prompts' rows go, each with its \"answer\".")
  flags.DEFINE_bool("raw", False, "Continue the prompt as plain text, without the instruction format.")
  flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate.")
  flags.DEFINE_integer("batch_size", 8, "Prompts decoded together (--prompts).")
  flags.DEFINE_float("temperature", 0.0, "0: greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens with this much probability.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  app.run(main)
