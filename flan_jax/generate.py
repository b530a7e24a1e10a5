r"""Ask a trained model something.

  python -m flan_jax.generate --workdir workdirs/tiny --prompt "Is this review positive? ..." \
      [--step N] [--max_new_tokens 64] [--temperature 0] [--top_k 0] [--top_p 1]

The prompt is rendered in the run's instruction format (data.template.format)
as a user turn; the answer is decoded with the KV cache and printed.
"""

import json
import os

import jax
import ml_collections
from absl import app, flags

from flan_jax import checkpoint, decode, metric_writer, sharding, workdirs
from flan_jax.data import pipeline, templates
from flan_jax.model import from_config


def prompt_tokens(tokenizer, prompt: str, fmt: str):
  """The tokens a trained model sees before its answer: the user turn and the assistant prefix."""
  tokens, weights = tokenizer.encode_segments(templates.to_segments([("user", prompt), ("assistant", "")], fmt))
  return tokens[:len(weights) - int(weights.sum())].tolist()  # drop the trailing EOS of the empty answer


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  metric_writer.quiet_absl_logging()
  workdir = flags.FLAGS.workdir
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: --workdir must be a training run's workdir")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  tokenizer = pipeline.get_tokenizer(config.data, workdirs.tokenizer_dir(workdir))
  model = from_config(config.model)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = sharding.rules(config.sharding_rules)
  with sharding.context(mesh, rules):
    step, params = checkpoint.restore_params(checkpoint.directory(workdir),
                                             sharding.param_shapes(model, mesh, rules), step=flags.FLAGS.step)
  [answer] = decode.generate(params, model, [prompt_tokens(tokenizer, flags.FLAGS.prompt, config.data.template.format)],
                             max_new_tokens=flags.FLAGS.max_new_tokens, eos_id=tokenizer.eos_id,
                             pad_id=tokenizer.pad_id, temperature=flags.FLAGS.temperature, top_k=flags.FLAGS.top_k,
                             top_p=flags.FLAGS.top_p, rng=jax.random.key(flags.FLAGS.seed))
  print(f"[step {step}] {tokenizer.decode(answer.tolist()).strip()}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
  flags.DEFINE_string("prompt", None, "The instruction (and input) to answer.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate.")
  flags.DEFINE_float("temperature", 0.0, "0: greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens with this much probability.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  app.run(main)
