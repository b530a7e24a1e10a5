r"""Self-Instruct (Wang et al. 2022, "Self-Instruct: Aligning Language Models with Self-Generated
Instructions"): instruction data bootstrapped from a few human-written seed tasks by any model
flan_jax can load, with the project's batched KV-cache sampling.

  python -m flan_jax.self_instruct (--checkpoint CKPT | --workdir RUN) \
      --seed_tasks seed_tasks.jsonl --out generated.jsonl --num_instructions 100 [--seed 0]
      [--batch_size 16] [--temperature 0.7] [--top_p 0.5] [--instances_per_instruction 1]

Seed tasks are in Self-Instruct's own format, one JSON object per line: `instruction`,
`instances: [{input, output}]`, `is_classification`. Each round:
  1. `batch_size` prompts, each a numbered list of 8 instructions (6 seeds and 2 generated ones
     once there are two, shuffled), which the model continues as plain text (sampled at
     temperature 0.7, top-p 0.5 by default: the paper's settings).
  2. Each new instruction is kept only if it has 4 to 150 words, contains none of the words a text
     model cannot serve (BLOCKED_WORDS), starts with neither punctuation nor a non-ASCII character,
     and its ROUGE-L against every seed and every kept instruction is at most 0.7. The last
     instruction of a continuation cut off by max_new_tokens is dropped.
  3. The model says whether each kept instruction is a classification task (its probabilities of
     " Yes" and " No" after labelled seed examples).
  4. It writes instances after seed examples of the same kind: a classification task's class label
     first, then an input of that class; any other task's input, then its output (which ends at a
     blank line or the next "Task:"). Instances that do not parse, have an empty output, repeat their
     input as output, repeat an earlier instance or are cut off are dropped, and an instruction left
     with no instance is dropped with them.

OUT gets one row per instance, {instruction, input, output, category, is_classification, round},
appended after every round: `data.local_tasks` reads it as
  dict(name="self_instruct", path=OUT, format="alpaca", cluster_field="category")
with categories "classification" and "generation". OUT.summary.json (written atomically after each
round) holds the settings, the counts each filter kept and rejected, and the rounds done.

Rounds run until OUT holds at least --num_instructions instructions (the last round may overshoot
by what it kept, as the reference implementation does). Rerunning with the same settings and a
larger target appends; rows of a round that was interrupted before its summary was written are
discarded and the round is redone. Round r samples with (seed, r) alone, so a given seed gives the
same rows however the run was split into invocations (on one machine and software stack).
"""

import collections
import dataclasses
import functools
import hashlib
import json
import os
import re
import string
import time

import jax
import numpy as np
import tqdm
from absl import app, flags
from etils import epath
from rouge_score import rouge_scorer

from flan_jax import commands, inference

PROMPT_SEEDS, PROMPT_GENERATED = 6, 2  # instructions per prompt, from the seeds and from the generated pool
MIN_WORDS, MAX_WORDS = 4, 150
MAX_ROUGE_L = 0.7
# What a text-only model cannot serve (the reference implementation's list; plurals count too).
BLOCKED_WORDS = ("image", "graph", "picture", "file", "map", "draw", "plot", "go to", "video", "audio", "music",
                 "flowchart", "diagram")
INSTANCE_EXAMPLES = 4  # seed examples in an instance prompt
CLASSIFY_EXAMPLES = 6  # seed examples of each kind in the classification prompt
PATIENCE = 10  # rounds in a row that keep nothing before the run gives up
SETTINGS = ("seed", "seed_tasks_sha256", "model", "step", "batch_size", "temperature", "top_p", "max_new_tokens",
            "instances_per_instruction")

INSTRUCTIONS_HEADER = "Here is a list of different tasks a person might ask a helpful assistant to do:\n\n"
CLASSIFY_HEADER = ("For each task, say whether it is a classification task: one whose answer is one of a few "
                   "fixed labels.\n\n")
INSTANCE_HEADER = "For each task, write an example: an input (left empty if the task needs none) and its output.\n\n"
LABEL_FIRST_HEADER = "For each classification task, write an example: a class label, then an input of that class.\n\n"


@dataclasses.dataclass(frozen=True)
class SeedTask:
  instruction: str
  instances: tuple[tuple[str, str], ...]  # (input, output)
  is_classification: bool


def read_seed_tasks(path: str) -> list[SeedTask]:
  """Self-Instruct's seed format; a malformed line is an error naming the file, line and field."""
  seeds = []
  for row, where in inference.read_jsonl(path):
    instruction, instances, is_classification = (row.get(k) for k in ("instruction", "instances", "is_classification"))
    if not isinstance(instruction, str) or not instruction.strip():
      raise ValueError(f"{where}: missing or empty 'instruction'")
    if not isinstance(instances, list) or not instances:
      raise ValueError(f"{where}: 'instances' must be a non-empty list of {{input, output}}")
    pairs = []
    for i, instance in enumerate(instances):
      if (not isinstance(instance, dict) or not isinstance(instance.get("input", ""), str)
          or not isinstance(instance.get("output"), str) or not instance["output"].strip()):
        raise ValueError(f"{where}: instances[{i}] must have a string 'input' and a non-empty string 'output'")
      pairs.append((instance.get("input", "").strip(), instance["output"].strip()))
    if not isinstance(is_classification, bool):
      raise ValueError(f"{where}: 'is_classification' must be true or false")
    seeds.append(SeedTask(instruction.strip(), tuple(pairs), is_classification))
  if not seeds:
    raise ValueError(f"{path}: no seed tasks")
  return seeds


# ---- Prompts and parsing -----------------------------------------------------------------------

def instructions_prompt(instructions) -> str:
  """A numbered list of instructions that asks for the next one."""
  lines = "".join(f"Task {i}: {text}\n" for i, text in enumerate(instructions, 1))
  return f"{INSTRUCTIONS_HEADER}{lines}Task {len(instructions) + 1}:"


def parse_instructions(continuation: str, cut_short: bool) -> tuple[list[str], int]:
  """(instructions, dropped) from a continuation of instructions_prompt: the list ends at a blank
  line or after PROMPT_SEEDS + PROMPT_GENERATED new entries; the last entry of a continuation that
  was cut off is dropped (counted)."""
  ended_by_blank_line = "\n\n" in continuation
  text = continuation.split("\n\n")[0]
  pieces = re.split(r"\n\s*Task \d+\s*:", text)
  limit = PROMPT_SEEDS + PROMPT_GENERATED
  dropped = 0
  if cut_short and not ended_by_blank_line and len(pieces) <= limit:
    pieces, dropped = pieces[:-1], 1
  return [re.sub(r"\s+", " ", p).strip() for p in pieces[:limit]], dropped


def classify_prompt(seeds: list[SeedTask], instruction: str) -> str:
  yes = [s for s in seeds if s.is_classification][:CLASSIFY_EXAMPLES]
  no = [s for s in seeds if not s.is_classification][:CLASSIFY_EXAMPLES]
  examples = [s for pair in zip(yes, no) for s in pair]
  lines = "".join(f"Task: {s.instruction}\nClassification: {'Yes' if s.is_classification else 'No'}\n\n"
                  for s in examples)
  return f"{CLASSIFY_HEADER}{lines}Task: {instruction}\nClassification:"


def instance_prompt(examples: list[SeedTask], instruction: str, is_classification: bool) -> str:
  """Seed examples of the same kind, then the new instruction awaiting its instance: label first for
  classification tasks, input first otherwise."""
  blocks = []
  for seed in examples:
    given, output = seed.instances[0]
    if is_classification:
      blocks.append(f"Task: {seed.instruction}\nClass label: {output}\nInput: {given}".rstrip())
    else:
      blocks.append(f"Task: {seed.instruction}\nInput: {given}".rstrip() + f"\nOutput: {output}")
  header = LABEL_FIRST_HEADER if is_classification else INSTANCE_HEADER
  first_field = "Class label:" if is_classification else "Input:"
  return header + "\n\n".join(blocks) + f"\n\nTask: {instruction}\n{first_field}"


def parse_instance(continuation: str, is_classification: bool, cut_short: bool) -> tuple[tuple[str, str] | None, str]:
  """((input, output), "") from a continuation of instance_prompt, or (None, why it was rejected).
  The instance ends where the model starts another task, or at the first blank line after its second
  field (the output, or a classification task's input)."""
  second = "Input:" if is_classification else "Output:"
  first_text, found, second_text = re.split(r"\n\s*Task:", continuation)[0].partition(second)
  if not found:
    return None, "instance_cut_short" if cut_short else "instance_unparsed"
  ended = re.search(r"\n\s*Task:", continuation) or "\n\n" in second_text.strip()
  if cut_short and not ended:
    return None, "instance_cut_short"
  first_text, second_text = first_text.strip(), second_text.strip().split("\n\n")[0].strip()
  given, output = (second_text, first_text) if is_classification else (first_text, second_text)
  if not output:
    return None, "instance_empty_output"
  if output == given:
    return None, "instance_output_is_input"
  return (given, output), ""


# ---- Filters -----------------------------------------------------------------------------------

_BLOCKED = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLOCKED_WORDS) + r")s?\b")


def rejection(instruction: str) -> str:
  """Why an instruction fails the filters that look at it alone ("" if it passes)."""
  words = len(instruction.split())
  if words < MIN_WORDS:
    return "too_short"
  if words > MAX_WORDS:
    return "too_long"
  if _BLOCKED.search(instruction.lower()):
    return "blocked_word"
  if instruction[0] in string.punctuation:
    return "starts_with_punctuation"
  if not instruction[0].isascii():
    return "starts_non_ascii"
  return ""


@functools.cache
def _rouge():
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def most_similar(instruction: str, pool) -> float:
  """The highest ROUGE-L F-measure of an instruction against any of the pool's."""
  return max((_rouge().score(other, instruction)["rougeL"].fmeasure for other in pool), default=0.0)


# ---- The run -----------------------------------------------------------------------------------

def read_rows(path: epath.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summary_path(out: epath.Path) -> epath.Path:
  return out.with_suffix(".summary.json")


def _write_atomically(path: epath.Path, text: str):
  """Writes from process 0 only (every process computes the same rows: see commands.load_model)."""
  if jax.process_index():
    return
  tmp = path.parent / f".{path.name}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def resume(out: epath.Path, settings: dict) -> tuple[dict, list[dict]]:
  """(summary, rows) of an earlier run into OUT with the same settings (or a fresh start). Rows of an
  interrupted round (round >= the summary's rounds) are discarded from the file."""
  summary_file = summary_path(out)
  if not summary_file.exists():
    if out.exists() and out.read_text().strip():
      raise FileExistsError(f"{out} exists but {summary_file} does not: not a self_instruct output; choose another --out")
    return {"settings": settings, "rounds": 0, "instructions": 0, "instances": 0, "candidates": 0,
            "kept_by_filter": {}, "rejected": {}, "classification": 0, "seconds": 0.0}, []
  summary = json.loads(summary_file.read_text())
  for key in SETTINGS:
    if summary["settings"].get(key) != settings[key]:
      raise ValueError(f"{out} was generated with {key}={summary['settings'].get(key)!r}, not {settings[key]!r}: "
                       "rerun with the same settings to extend it, or choose another --out")
  rows = read_rows(out)
  done = [r for r in rows if r["round"] < summary["rounds"]]
  if len(done) != len(rows):
    _write_atomically(out, "".join(json.dumps(r) + "\n" for r in done))
  return summary, done


def run_round(loaded: inference.LoadedModel, seeds: list[SeedTask], kept: list[str], round_index: int,
              settings: dict, counts: collections.Counter) -> list[dict]:
  """One round: new rows (one per instance); `counts` gains what each filter passed and rejected."""
  rng = np.random.default_rng([settings["seed"], round_index])
  key = jax.random.fold_in(jax.random.key(settings["seed"]), round_index)
  sampling = dict(batch_size=settings["batch_size"], temperature=settings["temperature"], top_p=settings["top_p"])
  tokenizer = loaded.tokenizer

  prompts = []
  for _ in range(settings["batch_size"]):
    generated = [kept[i] for i in rng.choice(len(kept), min(PROMPT_GENERATED, len(kept)), replace=False)]
    chosen = [seeds[i].instruction for i in rng.choice(len(seeds), PROMPT_SEEDS + PROMPT_GENERATED - len(generated),
                                                        replace=False)]
    listed = generated + chosen
    rng.shuffle(listed)
    prompts.append(tokenizer.encode_text(instructions_prompt(listed)))
  texts, cut = inference.continue_texts(loaded, prompts, max_new_tokens=settings["max_new_tokens"],
                                       rng=jax.random.fold_in(key, 0), **sampling)
  pool = [s.instruction for s in seeds] + list(kept)
  new = []
  for text, cut_short in zip(texts, cut):
    candidates, dropped = parse_instructions(text, cut_short)
    counts["cut_short"] += dropped
    counts["candidates"] += len(candidates) + dropped
    for instruction in candidates:
      why = rejection(instruction)
      if not why and most_similar(instruction, pool) > MAX_ROUGE_L:
        why = "similar"
      if why:
        counts[why] += 1
        continue
      instruction = instruction[0].upper() + instruction[1:]
      pool.append(instruction)
      new.append(instruction)
  counts["passed_instruction_filters"] += len(new)
  if not new:
    return []

  yes_no = inference.choose(loaded, [tokenizer.encode_text(classify_prompt(seeds, i)) for i in new], [" Yes", " No"],
                           batch_size=settings["batch_size"])
  is_classification = [bool(s[0] > s[1]) for s in yes_no]
  by_kind = {kind: [s for s in seeds if s.is_classification == kind] or seeds for kind in (True, False)}
  instance_prompts, owners = [], []
  for index, (instruction, kind) in enumerate(zip(new, is_classification)):
    for _ in range(settings["instances_per_instruction"]):
      examples = [by_kind[kind][i] for i in rng.choice(len(by_kind[kind]), min(INSTANCE_EXAMPLES, len(by_kind[kind])),
                                                       replace=False)]
      instance_prompts.append(tokenizer.encode_text(instance_prompt(examples, instruction, kind)))
      owners.append(index)
  texts, cut = inference.continue_texts(loaded, instance_prompts, max_new_tokens=settings["max_new_tokens"],
                                       rng=jax.random.fold_in(key, 1), **sampling)
  instances = collections.defaultdict(list)
  for owner, text, cut_short in zip(owners, texts, cut):
    instance, why = parse_instance(text, is_classification[owner], cut_short)
    if instance and instance in instances[owner]:
      instance, why = None, "instance_duplicate"
    if instance:
      instances[owner].append(instance)
    else:
      counts[why] += 1
  rows = []
  for index, instruction in enumerate(new):
    if not instances[index]:
      counts["no_instance"] += 1
      continue
    category = "classification" if is_classification[index] else "generation"
    rows += [{"instruction": instruction, "input": given, "output": output, "category": category,
              "is_classification": is_classification[index], "round": round_index}
             for given, output in instances[index]]
  return rows


INSTRUCTION_FILTERS = ("cut_short", "too_short", "too_long", "blocked_word", "starts_with_punctuation",
                       "starts_non_ascii", "similar")
INSTANCE_FILTERS = ("instance_cut_short", "instance_unparsed", "instance_empty_output", "instance_output_is_input",
                    "instance_duplicate", "no_instance")


def self_instruct(loaded: inference.LoadedModel, seed_tasks: str, out: str, num_instructions: int, *, seed: int = 0,
                  batch_size: int = 16, temperature: float = 0.7, top_p: float = 0.5, max_new_tokens: int = 256,
                  instances_per_instruction: int = 1, progress: bool = True) -> dict:
  """Runs rounds until OUT holds at least `num_instructions` instructions; returns the summary."""
  seeds = read_seed_tasks(seed_tasks)
  if len(seeds) < PROMPT_SEEDS + PROMPT_GENERATED:
    raise ValueError(f"{seed_tasks}: {len(seeds)} seed tasks; a prompt needs {PROMPT_SEEDS + PROMPT_GENERATED}")
  out = epath.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  settings = dict(seed=seed, seed_tasks=str(seed_tasks),
                  seed_tasks_sha256=hashlib.sha256(epath.Path(seed_tasks).read_bytes()).hexdigest(),
                  model=loaded.path, step=loaded.step, batch_size=batch_size, temperature=temperature, top_p=top_p,
                  max_new_tokens=max_new_tokens, instances_per_instruction=instances_per_instruction)
  summary, rows = resume(out, settings)
  kept = list(dict.fromkeys(r["instruction"] for r in rows))
  counts = collections.Counter({**summary["rejected"], **summary["kept_by_filter"]})
  counts["candidates"] = summary["candidates"]
  idle_rounds = 0
  bar = tqdm.tqdm(total=num_instructions, initial=min(len(kept), num_instructions), unit="instruction",
                  desc="self-instruct", disable=not progress)
  start = time.time()
  while len(kept) < num_instructions and idle_rounds < PATIENCE:
    new_rows = run_round(loaded, seeds, kept, summary["rounds"], settings, counts)
    if not jax.process_index():
      with open(out, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in new_rows))
        f.flush()
        os.fsync(f.fileno())
    rows += new_rows
    new = list(dict.fromkeys(r["instruction"] for r in new_rows))
    kept += new
    idle_rounds = 0 if new else idle_rounds + 1
    summary.update(
        rounds=summary["rounds"] + 1, instructions=len(kept), instances=len(rows), candidates=counts["candidates"],
        classification=len({r["instruction"] for r in rows if r["is_classification"]}),
        kept_by_filter={"passed_instruction_filters": counts["passed_instruction_filters"], "kept": len(kept)},
        rejected={k: counts[k] for k in INSTRUCTION_FILTERS + INSTANCE_FILTERS},
        seconds=summary["seconds"] + time.time() - start, target=num_instructions,
        stopped="" if idle_rounds < PATIENCE else f"no new instruction in {PATIENCE} rounds")
    start = time.time()
    _write_atomically(summary_path(out), json.dumps(summary, indent=1))
    bar.update(min(len(kept), num_instructions) - bar.n)
    bar.set_postfix(round=summary["rounds"], candidates=counts["candidates"], instances=len(rows))
  bar.close()
  return summary


def main(argv):
  commands.start(argv)
  flag = flags.FLAGS
  loaded = commands.load_model()
  summary = self_instruct(loaded, flag.seed_tasks, flag.out, flag.num_instructions, seed=flag.seed,
                          batch_size=flag.batch_size, temperature=flag.temperature, top_p=flag.top_p,
                          max_new_tokens=flag.max_new_tokens, instances_per_instruction=flag.instances_per_instruction)
  if not jax.process_index():
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  commands.define_model_flags("the model that generates")
  flags.DEFINE_string("seed_tasks", None, "Seed tasks in Self-Instruct's JSONL format.", required=True)
  flags.DEFINE_string("out", None, "The JSONL file generated rows go to (appended to on a rerun).", required=True)
  flags.DEFINE_integer("num_instructions", None, "Stop once the output holds this many instructions.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the prompts' sampling and the model's.")
  flags.DEFINE_integer("batch_size", 16, "Prompts per round (and rows per decoding batch).")
  flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
  flags.DEFINE_float("top_p", 0.5, "Nucleus sampling's probability mass.")
  flags.DEFINE_integer("max_new_tokens", 256, "Most tokens per continuation.")
  flags.DEFINE_integer("instances_per_instruction", 1, "Instances sampled for each kept instruction.")
  app.run(main)
