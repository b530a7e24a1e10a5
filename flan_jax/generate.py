r"""Ask a trained or imported model something: one prompt, or a file of them.

  python -m flan_jax.generate --workdir workdirs/tiny --prompt "Is this review positive? ..."
  python -m flan_jax.generate --checkpoint CKPT --raw --prompt "The capital of France is" --max_new_tokens 16
  python -m flan_jax.generate --checkpoint CKPT --prompts held_out.jsonl --out answers.jsonl
      [--step N] [--max_new_tokens 64] [--temperature 0] [--top_k 0] [--top_p 1] [--batch_size 8]
      [--stop "\n\n###" --stop "Q:"]

The prompt is rendered as a user turn in the run's instruction format
(data.template.format), or for an imported checkpoint (flan_jax.convert) in its
own chat template (its family's format if it ships none); with --raw it is
completed as plain text, with the BOS/EOS its tokenizer adds. Decoding is greedy
unless --temperature is set, with the KV cache, and stops at the tokenizer's stop ids;
an answer ends before the first --stop string in it (a raw continuation or a template
format ends where the next example would begin).

--prompts reads JSONL rows with a "prompt" and optionally their own "stop" strings,
which add to --stop (other fields, such as "category", are kept) and --out writes each row with this model's "answer": the form flan_jax.judge
compares, so another model's answers file can serve as the prompts.
"""

import json

import jax
from absl import app, flags
from etils import epath

from flan_jax import commands, inference


def main(argv):
  commands.start(argv)
  flag = flags.FLAGS
  if bool(flag.prompt) == bool(flag.prompts) or bool(flag.prompts) != bool(flag.out):
    raise app.UsageError("give --prompt, or --prompts with --out")
  loaded = commands.load_model()
  sampling = dict(max_new_tokens=flag.max_new_tokens, batch_size=flag.batch_size, temperature=flag.temperature,
                  top_k=flag.top_k, top_p=flag.top_p, rng=jax.random.key(flag.seed))
  if flag.prompts:
    rows = inference.read_prompts(flag.prompts)
    stops = [[*flag.stop, *r.get("stop", ())] for r in rows]
    answers = inference.answer(loaded, [[("user", r["prompt"])] for r in rows], stops=stops, **sampling)
    if jax.process_index():
      return
    out = epath.Path(flag.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({**r, "answer": a, "model": loaded.path}) + "\n" for r, a in zip(rows, answers)))
    print(f"[step {loaded.step}] {len(rows)} answers -> {out}")
    return
  if flag.raw:
    [text], _ = inference.continue_texts(loaded, [loaded.tokenizer.encode_text(flag.prompt)],
                                         stops=[flag.stop], **sampling)
  else:
    [text] = inference.answer(loaded, [[("user", flag.prompt)]], stops=[flag.stop], **sampling)
  if not jax.process_index():
    print(f"[step {loaded.step}] {text}")


if __name__ == "__main__":
  commands.define_model_flags("the model that answers")
  flags.DEFINE_string("prompt", None, "The instruction (and input) to answer, or with --raw the text to continue.")
  flags.DEFINE_string("prompts", None, "A JSONL file of {\"prompt\", ...} rows to answer (with --out).")
  flags.DEFINE_string("out", None, "Where --prompts' rows go, each with its \"answer\".")
  flags.DEFINE_multi_string("stop", [], "A string an answer ends before (repeatable).")
  flags.DEFINE_bool("raw", False, "Continue the prompt as plain text, without the instruction format.")
  flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate.")
  flags.DEFINE_integer("batch_size", 8, "Prompts decoded together (--prompts).")
  flags.DEFINE_float("temperature", 0.0, "0: greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens with this much probability.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  app.run(main)
