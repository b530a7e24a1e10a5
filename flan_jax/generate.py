r"""Ask a trained or imported model something.

  python -m flan_jax.generate --workdir workdirs/tiny --prompt "Is this review positive? ..."
  python -m flan_jax.generate --checkpoint CKPT --raw --prompt "The capital of France is" --max_new_tokens 16
      [--step N] [--max_new_tokens 64] [--temperature 0] [--top_k 0] [--top_p 1]

The prompt is rendered as a user turn in the run's instruction format
(data.template.format), or for an imported checkpoint (flan_jax.convert) in its
own chat template (its family's format if it ships none); with --raw it is
completed as plain text, with the BOS/EOS its tokenizer adds. Decoding is greedy
unless --temperature is set, with the KV cache, and stops at the tokenizer's stop ids.
"""

import json

import jax
import ml_collections
from absl import app, flags
from etils import epath

from flan_jax import checkpoint, convert, decode, metric_writer, workdirs
from flan_jax.data import pipeline
from flan_jax.data import tokenizer as tokenizer_lib
from flan_jax.model import from_config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  metric_writer.quiet_absl_logging()
  flag = flags.FLAGS
  if bool(flag.workdir) == bool(flag.checkpoint):
    raise app.UsageError("give one of --workdir (a training run) or --checkpoint (an imported model)")
  if flag.checkpoint:
    info = convert.read_info(flag.checkpoint)
    fields, fmt = info["model"], info["chat_format"]
    tokenizer = tokenizer_lib.load(str(epath.Path(flag.checkpoint) / "hf"))
    step, params = checkpoint.load_for_inference(fields, checkpoint_dir=flag.checkpoint, step=flag.step)
  else:
    config_path = epath.Path(flag.workdir) / "config.json"
    if not config_path.exists():
      raise FileNotFoundError(f"{config_path} does not exist: --workdir must be a training run's workdir")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    fields, fmt = config.model.to_dict(), config.data.template.format
    tokenizer = pipeline.get_tokenizer(config.data, workdirs.tokenizer_dir(flag.workdir))
    step, params = checkpoint.load_for_inference(fields, workdir=flag.workdir, init_from=config.train.init_from,
                                                 step=flag.step)
  prompt = tokenizer.encode_text(flag.prompt) if flag.raw else tokenizer.generation_prompt([("user", flag.prompt)], fmt)
  [answer] = decode.generate(params, from_config(fields), [prompt], max_new_tokens=flag.max_new_tokens,
                             stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id, temperature=flag.temperature,
                             top_k=flag.top_k, top_p=flag.top_p, rng=jax.random.key(flag.seed))
  print(f"[step {step}] {tokenizer.decode(answer.tolist()).strip()}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_string("checkpoint", None, "A checkpoint written by flan_jax.convert import.")
  flags.DEFINE_string("prompt", None, "The instruction (and input) to answer, or with --raw the text to continue.",
                      required=True)
  flags.DEFINE_bool("raw", False, "Continue the prompt as plain text, without the instruction format.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate.")
  flags.DEFINE_float("temperature", 0.0, "0: greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens with this much probability.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  app.run(main)
