r"""Mixture report: what a config's data pipeline feeds the model; and its preparation.

  python -m flan_jax.data --config configs/tiny.py [--workdir DIR] [--json] [--show N]
  python -m flan_jax.data prepare --config configs/t0.py:... --out DIR [--num_workers N]

`prepare` writes the training stream, rendered and tokenized, to DIR (data/prepared.py); train
on it with `--config.data.prepared=DIR`.

Per task and cluster: examples available, sampling rate and count in a sample
of the stream; held-out and excluded clusters and the zero-shot evaluation
tasks; templates; token lengths; packing efficiency beside the naive
one-example-per-row figure; truncated and skipped counts; pipeline throughput
on one core.
"""

import collections
import json
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from flan_jax import distributed, workdirs
from flan_jax.data import decontamination, packing, pipeline, prepared, render, tasks, templates, vocab



def report(config, workdir: str, num_examples: int, num_batches: int) -> dict:
  data = config.data
  mix = pipeline.resolve_mixture(data)
  tokenizer = vocab.get_tokenizer(data, workdirs.tokenizer_dir(workdir))

  # Example stream (before packing): rates and token lengths.
  stats = render.Stats()
  records = pipeline.mixed_records(mix, config.seed)
  examples = pipeline.examples(data, mix, tokenizer, stats, seed=config.seed)
  lengths, counts = [], collections.Counter()
  for i in range(num_examples):
    features = examples[i]
    if features is not None:
      counts[records[i][0]] += 1
      lengths.append(len(features["inputs"]))
  lengths = np.asarray(lengths)

  # Packed batches: efficiency and throughput of the whole pipeline.
  batch_stats = render.Stats()
  iterator = iter(pipeline.batches(data, mix, tokenizer, batch_stats, seed=config.seed))
  next(iterator)  # first batch opens the sources; not timed
  cycle = pipeline.packing_cycle(data)  # timed over whole packing cycles (see there)
  start, segments, rows = time.perf_counter(), [], 0
  for _ in range(-(-num_batches // cycle) * cycle):
    batch = next(iterator)
    segments.append(batch["segment_ids"])
    rows += len(batch["segment_ids"])
  seconds = time.perf_counter() - start
  iterator.close()
  segment_ids = np.concatenate(segments)
  examples_packed = int(sum(len(np.unique(r[r > 0])) for r in segment_ids))

  cluster_rates = collections.defaultdict(float)
  for t in mix.train:
    cluster_rates[t.cluster] += mix.rates[t.name]
  return {
      "mixture": list(data.mixture),
      "seq_len": data.seq_len,
      "held_out_clusters": list(data.held_out_clusters),
      "excluded_clusters": sorted(tasks.excluded_clusters(list(data.held_out_clusters))),
      "evaluation_tasks": {t.name: t.cluster for t in mix.evaluation},
      "tasks": {t.name: {"cluster": t.cluster, "examples": mix.sizes[t.name], "rate": mix.rates[t.name],
                         "count": counts[t.name], "templates": len(templates.select_templates(
                             t.templates, inverted=data.template.inverted,
                             max_templates=data.template.max_templates)),
                         "templates_total": len(t.templates)} for t in mix.train},
      "clusters": dict(sorted(cluster_rates.items())),
      "tokenizer": {"path": tokenizer.path, "vocab_size": tokenizer.vocab_size},
      "example_tokens": {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
                         "p90": float(np.percentile(lengths, 90)), "p99": float(np.percentile(lengths, 99)),
                         "max": int(lengths.max())},
      "packing_efficiency": packing.efficiency(segment_ids),
      "naive_packing_efficiency": float(np.minimum(lengths, data.seq_len).mean() / data.seq_len),
      "examples_per_row": examples_packed / rows,
      "truncated": stats.truncated,
      "truncated_fraction": stats.truncated / num_examples,
      "skipped": dict(stats.skipped) | {"local_rows": len(mix.skipped_rows)},
      "skip_messages": (stats.skip_messages + list(mix.skipped_rows))[:20],
      "examples_per_s": examples_packed / seconds,
      "tokens_per_s": rows * data.seq_len / seconds,
      "non_pad_tokens_per_s": int((segment_ids > 0).sum()) / seconds,
      "renderings": renderings(stats.renderings),
      "contamination": mix.contamination,
      "duplicates": mix.duplicates,
  }


def renderings(counts) -> dict:
  """Realised shares of the rendering draws (render.Renderer): per output format and prompt setting
  (of all rendered examples), with a preamble, and with the input turn joined (of those with one)."""
  total = sum(v for k, v in counts.items() if k.startswith("format:"))
  share = lambda group: {k.split(":", 1)[1]: v / total for k, v in sorted(counts.items()) if k.startswith(group)}
  return {"format": share("format:"), "prompt": share("prompt:"), "preamble": counts["preamble"] / total,
          "input_turns": counts["input_turn"] / total,
          "input_joined": counts["input_joined"] / max(1, counts["input_turn"])}


def show(config, workdir: str, count: int):
  data = config.data
  mix = pipeline.resolve_mixture(data)
  renderer = render.Renderer(data, vocab.get_tokenizer(data, workdirs.tokenizer_dir(workdir)), mix.train,
                               render.Stats())
  records = pipeline.mixed_records(mix, config.seed)
  for i in range(count):
    rendered = renderer.render(records[i], np.random.default_rng([config.seed, i]))
    print(f"----- example {i}: task {records[i][0]}" + (f" ({rendered[1]} format)" if rendered else ""))
    print(templates.to_text(*rendered, chat_template=renderer.tokenizer.chat_template)
          if rendered else "(skipped bad record)")
  flagged = [(name, f) for name, t in (mix.contamination or {}).get("training_tasks", {}).items() for f in t["examples"]]
  for name, f in flagged[:count]:
    task = tasks.get(name)
    fields = task.example_fields(task.source(task.splits[0])[f["index"]])
    print(f"----- contaminating example: task {name}, training index {f['index']}, overlaps "
          + ", ".join(f"{m['name']} ({m['coverage']:.0%} of its words)" for m in f["instances"]))
    print(decontamination.prompt_text(task, fields))


def print_table(r: dict):
  print(f"mixture {r['mixture']}  seq_len {r['seq_len']}  tokenizer {r['tokenizer']['path']} "
        f"(vocab {r['tokenizer']['vocab_size']})")
  print(f"held out: {r['held_out_clusters']}  excluded from training: {r['excluded_clusters']}")
  print(f"zero-shot evaluation tasks: {', '.join(r['evaluation_tasks']) or '-'}\n")
  print(f"{'task':32} {'cluster':34} {'examples':>9} {'rate':>7} {'count':>6} {'templates':>9}")
  for name, t in r["tasks"].items():
    print(f"{name:32} {t['cluster']:34} {t['examples']:9d} {t['rate']:7.3f} {t['count']:6d} "
          f"{t['templates']:4d}/{t['templates_total']}")
  print("\ncluster rates: " + ", ".join(f"{c} {v:.3f}" for c, v in r["clusters"].items()))
  lt = r["example_tokens"]
  print(f"example tokens: mean {lt['mean']:.1f}  p50 {lt['p50']:.0f}  p90 {lt['p90']:.0f}  p99 {lt['p99']:.0f}  "
        f"max {lt['max']}")
  print(f"packing efficiency {r['packing_efficiency']:.4f} (naive one example per row: "
        f"{r['naive_packing_efficiency']:.4f}), {r['examples_per_row']:.1f} examples per row")
  shares = lambda d: ", ".join(f"{k} {v:.1%}" for k, v in d.items())
  rr = r["renderings"]
  print(f"renderings: formats {shares(rr['format'])}; prompts {shares(rr['prompt'])}; preamble {rr['preamble']:.1%}; "
        f"input joined {rr['input_joined']:.1%} of {rr['input_turns']:.1%} with an input turn")
  print(f"truncated {r['truncated']} ({r['truncated_fraction']:.2%})  skipped {r['skipped']}")
  for message in r["skip_messages"]:
    print(f"  skipped: {message}")
  print(f"pipeline throughput (one process): {r['examples_per_s']:.0f} examples/s, "
        f"{r['tokens_per_s']:.0f} tokens/s ({r['non_pad_tokens_per_s']:.0f} non-pad)")
  if r["duplicates"]:
    print("duplicates dropped: " + ", ".join(f"{n} {d['dropped']}/{d['of']}" for n, d in r["duplicates"].items()))
  if r["contamination"] is not None:
    print("\ndecontamination: evaluation set instances found in training: " + ", ".join(
        f"{name} {s['found_in_training']}/{s['instances']}" for name, s in r["contamination"]["evaluation_sets"].items()))
    for name, t in r["contamination"]["training_tasks"].items():
      print(f"  training task {name}: {t['flagged']} of {t['of']} examples overlap evaluation instances")


def main(argv):
  if argv[1:] not in ([], ["prepare"]):
    raise app.UsageError(f"unexpected arguments {argv[1:]}; the one command is `prepare`")
  config = flags.FLAGS.config
  if argv[1:] == ["prepare"]:
    if not flags.FLAGS.out:
      raise app.UsageError("prepare needs --out DIR")
    distributed.initialize(config.distributed)
    manifest = prepared.prepare(config, flags.FLAGS.out, flags.FLAGS.num_workers)
    if manifest:
      print(f"prepared {manifest['examples']} examples ({manifest['truncated']} truncated, "
            f"{sum(manifest['skipped'].values())} skipped) in {flags.FLAGS.out}; train with "
            f"--config.data.prepared={flags.FLAGS.out}")
    return
  workdir = flags.FLAGS.workdir or workdirs.default(flags.FLAGS["config"].config_filename)
  r = report(config, workdir, flags.FLAGS.examples, flags.FLAGS.batches)
  if flags.FLAGS.json:
    json.dump(r, sys.stdout, indent=1)
    print()
  else:
    print_table(r)
  if flags.FLAGS.show:
    show(config, workdir, flags.FLAGS.show)


if __name__ == "__main__":
  # Defined here, not at import, so that tests can import this module beside other commands.
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Workdir (tokenizer cache); default derived from the config.")
  flags.DEFINE_bool("json", False, "Print the report as JSON.")
  flags.DEFINE_integer("show", 0, "Also print this many rendered training examples.")
  flags.DEFINE_integer("examples", 4000, "Examples drawn to measure lengths and rates.")
  flags.DEFINE_string("out", None, "prepare: the directory to write (local or gs://).")
  flags.DEFINE_integer("num_workers", 0, "prepare: processes rendering shards (0: this one).")
  flags.DEFINE_integer("batches", 30, "Packed batches drawn to measure packing and throughput (rounded up to whole "
                       "packing cycles).")
  app.run(main)
