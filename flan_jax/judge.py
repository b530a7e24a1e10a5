r"""Which of two models answers the same prompts better: a model as judge, people, or both.

  python -m flan_jax.judge --judge CKPT --answers_a A.jsonl --answers_b B.jsonl --out DIR
  python -m flan_jax.judge --answers_a A.jsonl --answers_b B.jsonl --out DIR --serve [--port 8765]
  ... --export_pairs pairs.jsonl   # the decided pairs, for DPO (configs/dpo.py:pairs=pairs.jsonl)

Answers are JSONL rows {"prompt", "answer"} with an optional "category", as `flan_jax.generate
--prompts ... --out` and `flan_jax.evaluate` (eval/<step>/answers/) write them; a directory stands
for all of its *.jsonl files. A and B must answer the same prompts (a prompt asked twice pairs in
file order).

The model judge (`--judge`, an imported checkpoint or a training run's workdir) judges every pair in
both orders (flan_jax/evaluators/pairwise.py says how); its verdicts are kept in DIR/judgments.jsonl
and reused when the same judge meets the same pair again. People vote with `--serve` on a page on
127.0.0.1 (flan_jax/evaluators/voting.py); votes go to DIR/votes.sqlite, so a restarted server
carries on where it stopped; stopping it (Ctrl-C or SIGTERM) writes the report: DIR/judge.json (the
model judge's win rate of A over B at the top when there is one, else the people's; both under
"model" and "people", and their agreement on pairs both judged), judge.md and judge.png. With
`--export_pairs FILE`, every report also writes the decided pairs as preference rows (prompt,
chosen, rejected, category, source): the people's vote where there is one, else the judge's; ties
left out.
"""

import json
import signal

import jax
from absl import app, flags
from etils import epath

from flan_jax import commands, distributed, inference
from flan_jax.evaluators import pairwise, voting


def _stop(signum, frame):
  raise KeyboardInterrupt


def main(argv):
  commands.start(argv)
  flag = flags.FLAGS
  out = epath.Path(flag.out)
  out.mkdir(parents=True, exist_ok=True)
  pairs = pairwise.make_pairs(pairwise.read_answers(flag.answers_a),
                              pairwise.read_answers(flag.answers_b))
  names = {"a": flag.answers_a, "b": flag.answers_b, "judge": flag.judge}
  model = None
  if flag.judge:
    is_run = (epath.Path(flag.judge) / "config.json").exists()
    distributed.initialize()  # every process judges; process 0 alone writes and serves
    loaded = inference.load(workdir=flag.judge if is_run else "",
                            checkpoint_dir="" if is_run else flag.judge)
    model = pairwise.model_verdicts(loaded, pairs, out / "judgments.jsonl",
                                    batch_size=flag.batch_size)
    if jax.process_index():
      return
  store = voting.VoteStore(out / "votes.sqlite")

  def write():
    if model is None and not store.votes():
      print("No verdicts yet: no report written.")
      return
    result = pairwise.report(pairs, model, store.votes(), resamples=flag.resamples, seed=flag.seed,
                             names=names)
    pairwise.write_report(result, out)
    print((out / "judge.md").read_text())
    if flag.export_pairs:
      rows = pairwise.preference_rows(pairs, model, store.votes())
      epath.Path(flag.export_pairs).write_text("".join(json.dumps(r) + "\n" for r in rows))
      print(f"{len(rows)} decided pairs of {len(pairs)} written to {flag.export_pairs} "
            f"({sum(r['source'] == 'people' for r in rows)} from people's votes)")

  if not flag.serve and model is None and not store.votes():
    raise app.UsageError(
        "nothing to report: give --judge CKPT, or --serve to collect people's votes")
  write()
  if flag.serve:
    server = voting.make_server(pairs, store, port=flag.port, seed=flag.seed)
    signal.signal(signal.SIGTERM, _stop)  # `kill` stops it as Ctrl-C does: the report is written
    print(f"Voting page: http://127.0.0.1:{server.server_address[1]}/  "
          "(Ctrl-C stops it and writes the report)", flush=True)
    try:
      server.serve_forever()
    except KeyboardInterrupt:
      pass
    finally:
      server.server_close()
    write()
  store.close()


if __name__ == "__main__":
  flags.DEFINE_string("judge", None,
                      "The judge: an imported checkpoint (flan_jax.convert) or a run's workdir.")
  flags.DEFINE_string("answers_a", None,
                      "A's answers: JSONL {prompt, answer[, category]} or a directory of them.",
                      required=True)
  flags.DEFINE_string("answers_b", None, "B's answers, to the same prompts.", required=True)
  flags.DEFINE_string("out", None,
                      "Directory for judge.json, judge.md, judge.png, judgments and votes.",
                      required=True)
  flags.DEFINE_bool("serve", False, "Serve the voting page for people on 127.0.0.1 until Ctrl-C.")
  flags.DEFINE_integer("port", 8765, "The voting page's port (0: any free one).")
  flags.DEFINE_integer("batch_size", 8, "Judge prompts scored together.")
  flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")
  flags.DEFINE_string("export_pairs", None,
                      "Also write the decided pairs here as preference rows (JSONL) for DPO.")
  flags.DEFINE_integer("seed", 0,
                       "Seed of the bootstrap, the page's order and its left/right placement.")
  app.run(main)
