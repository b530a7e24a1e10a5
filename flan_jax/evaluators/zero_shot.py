r"""FLAN's zero-shot evaluation: rank classification and generation per task and template, scored
per cluster, on the held-out clusters or (`clusters="seen"`) the training clusters' validation splits.

Every task is evaluated on the first `max_examples` of its evaluation split, through each of its
(non-inverted) templates (the first `max_templates`, if set). Tasks with answer options are scored by
rank classification: the option (with the EOS that ends a response) of highest log-likelihood
given the prompt wins. Other tasks are answered by greedy decoding with a KV cache. A task's score
is the mean over its templates, with the best template beside it; a cluster's is the mean over its
tasks. Results go to `DIR/eval/<step>/results.json` and `results.md` (every group evaluated at
that step), and each generation task's answers to `answers/<task>.jsonl` ({prompt, answer,
category, ...}: what flan_jax.judge compares).
"""

import dataclasses
import json

import jax
import numpy as np
from absl import logging
from etils import epath

from flan_jax import decode, metrics, scoring
from flan_jax.data import pipeline, render, tasks, templates
from flan_jax.evaluators.settings import read as read_settings

GROUPS = ("held_out", "seen")


@dataclasses.dataclass(frozen=True)
class Settings:
  """A zero_shot entry's own keys (config.evals.<name>)."""
  clusters: str = "held_out"  # held_out | seen (the training clusters' validation splits)
  max_examples: int = 50  # per task, per template
  max_templates: int = 0  # 0: every non-inverted template
  batch_size: int = 64  # rows scored or decoded together
  max_new_tokens: int = 32  # generation tasks
  length_normalize: bool = False  # rank classification by mean instead of total log-likelihood

  def __post_init__(self):
    if self.clusters not in GROUPS:
      raise ValueError(f"clusters={self.clusters!r}: choose from {', '.join(GROUPS)}")


class ZeroShot:
  """The zero_shot evaluator (see the module docstring and evaluators/common.py)."""

  def __init__(self, context, *, name: str, **kwargs):
    self.settings = read_settings(Settings, name, kwargs)
    self.context, self.name = context, name

  def run(self, params, step: int) -> dict:
    context = self.context
    results = evaluate(params, context.model, context.tokenizer, context.config, context.mesh, self.settings)
    if jax.process_index() == 0:
      write_results(results, context.workdir, step)
    return summary(results)

  def written(self, step: int) -> bool:
    path = epath.Path(self.context.workdir) / "eval" / str(step) / "results.json"
    return path.exists() and self.settings.clusters in json.loads(path.read_text())


def task_examples(task: tasks.Task, settings, held_out: bool = True, skip_bad_records: bool = False):
  """(fields, templates, records skipped) of a task's evaluation split: its first max_examples
  examples (from Task.evaluation_split). Unlabeled records are skipped; bad ones too with
  skip_bad_records (data.skip_bad_records), else they are errors naming the split and record. A
  conversational task has one "template", None: its conversation as written."""
  split = task.evaluation_split(held_out)
  records = task.source(split)
  fields, skipped = [], 0
  for i in range(len(records)):
    if len(fields) == settings.max_examples:
      break
    try:
      fields.append(task.example_fields(records[i]))
    except tasks.BadRecordError as e:
      if not (skip_bad_records or isinstance(e, tasks.UnlabeledRecordError)):
        raise tasks.BadRecordError(f"{e} (split {split!r}, record {i}; data.skip_bad_records=True skips such "
                                   "records)") from None
      skipped += 1
  task_templates = [t for t in task.templates if not t.inverted] or [None]
  if settings.max_templates:
    task_templates = task_templates[:settings.max_templates]
  return fields, task_templates, skipped


def rank_classification(params, model, tokenizer, items, config, settings, mesh):
  """For each (task, fields, template) of `items`, (predicted option, target) per example: the option of
  highest (optionally length-normalised) log-likelihood as the response to the rendered prompt. Every
  option of every item is scored in one pass, each example's prompt run once (scoring.score_continuations)."""
  requests, counts, options = [], [], []
  for task, fields, template in items:
    for f in fields:
      context = render.conversation(task, f, template, config.data.template)[:-1]  # all before the answer
      options.append(task.example_options(f))
      encoded = [tokenizer.encode_conversation([*context, ("assistant", option)], config.data.template.format)
                 for option in options[-1]]
      split = shared_prompt_length(encoded)
      requests.append((encoded[0][0][:split], [(tokens[split:], weights[split:]) for tokens, weights in encoded]))
      counts.append(np.asarray([weights.sum() for _, weights in encoded]))
  scores, _ = scoring.score_continuations(params, model, requests, batch_size=settings.batch_size,
                                          seq_len=config.data.seq_len, chunk_len=config.loss.chunk_len,
                                          mesh=mesh)
  if settings.length_normalize:
    scores = [s / np.maximum(c, 1) for s, c in zip(scores, counts)]
  predictions = iter(o[int(np.argmax(s))] for o, s in zip(options, scores))
  return [([next(predictions) for _ in fields], [f["answer"] for f in fields]) for _, fields, _ in items]


def shared_prompt_length(encoded) -> int:
  """How many leading tokens the (tokens, weights) encodings of one prompt's options share, up to the first
  weighted (scored) one, and at least one: the prompt they are scored after."""
  first_scored = min(int(np.argmax(weights > 0)) if weights.any() else len(weights) for _, weights in encoded)
  shared = first_scored
  for tokens, _ in encoded[1:]:
    n = min(shared, len(tokens))
    shared = int(np.argmin(np.append(encoded[0][0][:n] == tokens[:n], False)))
  return max(1, shared)


def generation(params, model, tokenizer, items, config, settings):
  """For each (task, fields, template) of `items`, (generated answer, target, prompt text) per example,
  by greedy decoding from the rendered prompt. The target is the last assistant turn, or all of an
  example's references where it has several; the prompt text is what a person would have typed
  (templates.user_text). Every item's prompts are decoded together, in batches of similar length."""
  prompts, targets, texts, sizes = [], [], [], []
  for task, fields, template in items:
    for f in fields:
      turns = render.conversation(task, f, template, config.data.template)
      texts.append(templates.user_text(turns[:-1]))
      prompt = tokenizer.generation_prompt(turns[:-1], config.data.template.format)  # all before the last answer
      prompts.append(prompt[-(config.data.seq_len - settings.max_new_tokens):])
      several = len(f.get("references") or ()) > 1 and turns[-1][1] == f["answer"]
      targets.append(list(f["references"]) if several else turns[-1][1])
    sizes.append(len(fields))
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
  outputs = decode.generate(params, model, [prompts[i] for i in order], max_new_tokens=settings.max_new_tokens,
                            stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id, bucket=scoring.LENGTH_BUCKET,
                            batch_size=settings.batch_size)
  predictions = [""] * len(prompts)
  for i, output in zip(order, outputs):
    predictions[i] = tokenizer.decode(output.tolist()).strip()
  ends = np.cumsum(sizes)
  return [(predictions[end - n:end], targets[end - n:end], texts[end - n:end]) for n, end in zip(sizes, ends)]


def evaluate(params, model, tokenizer, config, mesh, settings: Settings) -> dict:
  """Scores of every task of settings.clusters: the held-out tasks' evaluation splits, or the training
  tasks' validation splits ("seen").

  A task's score per template, their mean and best; a generation task's answers come along as
  `answers`, rows {prompt, answer, category, task, template, reference} (the form flan_jax.judge
  reads). All tasks' and templates' rank classifications are scored together, and all their
  generations decoded together, so that batches are full and few shapes compile."""
  train, held_out = pipeline.split_tasks(config.data)
  groups = {settings.clusters: held_out if settings.clusters == "held_out" else train}
  results = {"tasks": {}, "clusters": {}, "unscored": {}}
  jobs = []  # (group, task, fields, templates, skipped)
  for group, group_tasks in groups.items():
    for task in group_tasks:
      fields, task_templates, skipped = task_examples(task, settings, group == "held_out",
                                                      config.data.skip_bad_records)
      if fields:
        jobs.append((group, task, fields, task_templates, skipped))
      else:
        logging.warning("task %s has no evaluation examples (no validation split): not scored", task.name)
        results["unscored"][task.name] = "no evaluation examples (give a validation split)"
  items = {kind: [(task, fields, template) for _, task, fields, task_templates, _ in jobs
                  if task.is_classification == (kind == "classification") for template in task_templates]
           for kind in ("classification", "generation")}
  outcomes = iter(rank_classification(params, model, tokenizer, items["classification"], config, settings,
                                      mesh)
                  if items["classification"] else [])
  generated = iter(generation(params, model, tokenizer, items["generation"], config, settings)
                   if items["generation"] else [])
  for group, task, fields, task_templates, skipped in jobs:
    per_template, answers = [], []
    for index, _ in enumerate(task_templates):
      if task.is_classification:
        predictions, targets = next(outcomes)
      else:
        predictions, targets, texts = next(generated)
        answers += [{"prompt": text, "answer": prediction, "category": task.cluster, "task": task.name,
                     "template": index, "reference": target}
                    for text, prediction, target in zip(texts, predictions, targets)]
      refuse = [bool(f["refuse"]) for f in fields] if all("refuse" in f for f in fields) else None
      per_template.append(metrics.compute(task.metrics, predictions, targets, refuse))
    names = list(per_template[0])
    scores = {
        "group": group,
        "cluster": task.cluster,
        "examples": len(fields),
        "skipped_records": skipped,
        "metric": names[0],
        "templates": per_template,
        "mean": {n: float(np.mean([s[n] for s in per_template])) for n in names},
        "best": {n: float(np.max([s[n] for s in per_template])) for n in names},
    }
    if task.is_classification:  # the expected accuracy of a uniform guess
      scores["chance"] = float(np.mean([100.0 / len(task.example_options(f)) for f in fields]))
    else:
      scores["answers"] = answers
    results["tasks"][task.name] = scores
  for name, r in results["tasks"].items():
    cluster = results["clusters"].setdefault(r["cluster"], {"group": r["group"], "tasks": []})
    cluster["tasks"].append(name)
  for cluster in results["clusters"].values():
    members = [results["tasks"][n] for n in cluster["tasks"]]
    cluster["mean"] = float(np.mean([m["mean"][m["metric"]] for m in members]))
    cluster["best"] = float(np.mean([m["best"][m["metric"]] for m in members]))
  for group in groups:
    scores = [c["mean"] for c in results["clusters"].values() if c["group"] == group]
    results[group] = float(np.mean(scores)) if scores else None
  return results


def summary(results: dict) -> dict:
  """The headline numbers: {"eval/held_out": ..., "eval/seen": ..., "eval/<cluster>": ...}."""
  scores = {f"eval/{group}": results[group] for group in ("held_out", "seen") if results.get(group) is not None}
  return {**scores, **{f"eval/{name}": c["mean"] for name, c in sorted(results["clusters"].items())}}


def write_results(results: dict, workdir: str, step: int) -> epath.Path:
  """DIR/eval/<step>/results.json and results.md, and each generation task's answers in
  answers/<task>.jsonl (for flan_jax.judge). Results already at that step (another group's, from
  another zero-shot evaluator) are kept beside these: the files hold every group evaluated there."""
  directory = epath.Path(workdir) / "eval" / str(step)
  (directory / "answers").mkdir(parents=True, exist_ok=True)
  if (directory / "results.json").exists():
    earlier = json.loads((directory / "results.json").read_text())
    results = {**earlier, **results, **{key: {**earlier.get(key, {}), **results[key]}
                                        for key in ("tasks", "clusters", "unscored")}}
  tasks_without_answers = {}
  for name, task in results["tasks"].items():
    task = dict(task)
    if "answers" in task:
      rows = task.pop("answers")
      (directory / "answers" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks_without_answers[name] = task
  results = {**results, "step": step, "tasks": tasks_without_answers}
  (directory / "results.json").write_text(json.dumps(results, indent=1))
  lines = [f"# Zero-shot evaluation, step {step}", "",
           f"Held-out clusters: **{results['held_out']:.1f}**" if results.get("held_out") is not None else "",
           f"Seen clusters: **{results['seen']:.1f}**" if results.get("seen") is not None else "", "",
           "| cluster | group | task | metric | mean over templates | best template | chance |",
           "|---|---|---|---|---|---|---|"]
  for cluster_name, cluster in sorted(results["clusters"].items(), key=lambda kv: (kv[1]["group"], kv[0])):
    for name in cluster["tasks"]:
      t = results["tasks"][name]
      chance = f"{t['chance']:.1f}" if "chance" in t else ""
      lines.append(f"| {cluster_name} | {cluster['group']} | {name} | {t['metric']} | {t['mean'][t['metric']]:.1f} "
                   f"| {t['best'][t['metric']]:.1f} | {chance} |")
    lines.append(f"| **{cluster_name}** | {cluster['group']} | *cluster mean* | | **{cluster['mean']:.1f}** "
                 f"| {cluster['best']:.1f} | |")
  lines += [f"\nNot scored: {name}: {why}" for name, why in sorted(results.get("unscored", {}).items())]
  (directory / "results.md").write_text("\n".join(lines) + "\n")
  return directory
