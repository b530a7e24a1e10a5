"""Pairwise comparison of two models' answers to the same prompts: pairing, a model judge's
verdicts, win rates with bootstrap intervals and length control, the report; and the `pairwise`
evaluator, which answers a prompts file with the parameters being trained and has a judge compare
those answers with a baseline's.

A model judge reads both answers in its own chat format; its verdict is read from its probabilities
of the labels "1" and "2" as the first token of its reply (as AlpacaEval reads its judge), not from
free text. Every pair is judged in both orders; a pair whose two verdicts disagree (position bias)
or are exactly even is a tie, and identical answers are a tie without a call.

Win rate of A over B = (wins + ties / 2) / pairs, with a percentile bootstrap interval over pairs
(95%), per category and overall; beside it the length-controlled win rate of AlpacaEval 2 (Dubois
et al. 2024): a logistic regression of the outcome on an intercept and tanh(length difference / its
standard deviation), read at equal length (100 * sigmoid(intercept)). With two models there is no
per-instruction difficulty term.

The evaluator (config.evals entry `type="pairwise"`; see configs/common.py's `pairwise`): at each
of its steps it answers `prompts` (JSONL {"prompt"[, "category"]}) greedily and writes
eval/<step>/<name>/answers.jsonl; the judge (`judge`: an imported checkpoint or a run's workdir)
compares them (as A) with `baseline` (an answers file or directory as B; empty: this evaluator's
own answers at its first step, e.g. the imported model's at step 0 with at_start) and writes
judge.json, judge.md, judge.png and judgments.jsonl beside them. Logged: eval/<name>/win_rate and
eval/<name>/lc_win_rate.
"""

import dataclasses
import hashlib
import json

import jax
import numpy as np
import scipy.optimize
from etils import epath

from flan_jax import inference
from flan_jax.data import templates
from flan_jax.evaluators.settings import read as read_settings

LABELS = ("1", "2")  # the judge names the better answer's position
JUDGE_PROMPT = """Compare two responses to the same request and decide which one is better: \
more helpful, correct, relevant and complete. Do not let their order or length decide.

[Request]
{prompt}

[Response 1]
{first}

[Response 2]
{second}

Which response is better? Reply with 1 or 2 only."""
# Ridge on the length-controlled fit, so that one-sided outcomes give a finite intercept.
LENGTH_L2 = 0.01


@dataclasses.dataclass(frozen=True)
class Pair:
  # A hash of the prompt, its occurrence and both answers: a vote never outlives an edited answer.
  id: str
  prompt: str
  a: str
  b: str
  category: str


# ---- Reading answers ---------------------------------------------------------------------------


def read_answers(path: str) -> list[tuple[dict, str]]:
  """[(row, "file:line")] of a JSONL file, or of every *.jsonl file of a directory (sorted)."""
  source = epath.Path(path)
  files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
  if not files or not files[0].exists():
    raise FileNotFoundError(f"{path}: no answers file (a JSONL file, or a directory of them)")
  rows = [entry for file in files for entry in inference.read_jsonl(file)]
  for row, where in rows:
    if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
      raise ValueError(f"{where}: expected an object with string \"prompt\" and \"answer\"")
    if not isinstance(row.get("category", ""), str):
      raise ValueError(f"{where}: \"category\" must be a string")
  if not rows:
    raise ValueError(f"{path}: no answers")
  return rows


def _keyed(rows):
  seen, out = {}, {}
  for row, where in rows:
    occurrence = seen[row["prompt"]] = seen.get(row["prompt"], -1) + 1
    out[(row["prompt"], occurrence)] = (row, where)
  return out


def make_pairs(rows_a, rows_b) -> list[Pair]:
  """Pairs in A's order; A and B must answer the same prompts (each as often)."""
  a, b = _keyed(rows_a), _keyed(rows_b)
  only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
  if only_a or only_b:
    detail = [
        f"{len(keys)} only in {name} (first at {rows[keys[0]][1]}: {keys[0][0][:60]!r})"
        for name, keys, rows in (("A", only_a, a), ("B", only_b, b)) if keys
    ]
    raise ValueError("the answers files answer different prompts: " + "; ".join(detail))
  pairs = []
  for key, (row_a, _) in a.items():
    row_b = b[key][0]
    digest = hashlib.sha256(json.dumps([*key, row_a["answer"],
                                        row_b["answer"]]).encode()).hexdigest()[:16]
    category = row_a.get("category") or row_b.get("category") or "all"
    pairs.append(Pair(digest, key[0], row_a["answer"], row_b["answer"], category))
  return pairs


# ---- The model judge ---------------------------------------------------------------------------


def check_judge(loaded: inference.LoadedModel):
  if loaded.fmt == templates.CHAT_TEMPLATE and loaded.tokenizer.chat_template is None:
    raise ValueError(
        f"judge {loaded.path}: it is to be prompted through its tokenizer's chat template, but "
        f"{loaded.tokenizer.path} has none (tokenizer_config.json's chat_template or "
        "chat_template.jinja)")


def judge_prompt(loaded: inference.LoadedModel, prompt: str, first: str, second: str) -> list[int]:
  text = JUDGE_PROMPT.format(prompt=prompt.strip(), first=first.strip(), second=second.strip())
  return loaded.tokenizer.generation_prompt([("user", text)], loaded.fmt)


def combine(first_a: float, first_b: float) -> str:
  """The verdict of two orders: first_a is P(label 1) - P(label 2) with A shown first, first_b
  the same with B first. Both orders must prefer the same answer; otherwise (or if even) it is a
  tie."""
  a_first_says = "a" if first_a > 0 else "b" if first_a < 0 else "tie"
  b_first_says = "b" if first_b > 0 else "a" if first_b < 0 else "tie"
  return a_first_says if a_first_says == b_first_says else "tie"


def model_verdicts(loaded: inference.LoadedModel, pairs: list[Pair], cache_file: epath.Path, *,
                   batch_size: int = 8) -> dict[str, dict]:
  """{pair id: judgment}; judgments this judge already made are read from cache_file, new ones
  added."""
  check_judge(loaded)
  cached = {}
  if cache_file.exists():
    for line in cache_file.read_text().splitlines():
      record = json.loads(line)
      if record["judge"] == loaded.path and record["judge_step"] == loaded.step:
        cached[record["pair"]] = record
  todo = [p for p in pairs if p.id not in cached and p.a.strip() != p.b.strip()]
  new = {}
  for p in pairs:
    if p.id not in cached and p.a.strip() == p.b.strip():
      new[p.id] = {"pair": p.id, "verdict": "tie", "identical": True}
  if todo:
    prompts = [
        judge_prompt(loaded, p.prompt, *order) for p in todo for order in ((p.a, p.b), (p.b, p.a))
    ]
    log_probs = inference.choose(loaded, prompts, LABELS, batch_size=batch_size)
    probs = np.exp(log_probs - log_probs.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)  # of the two labels
    for i, p in enumerate(todo):
      a_first, b_first = log_probs[2 * i], log_probs[2 * i + 1]
      new[p.id] = {
          "pair": p.id,
          "verdict": combine(a_first[0] - a_first[1], b_first[0] - b_first[1]),
          "identical": False,
          "p_a_when_first": float(probs[2 * i, 0]),
          "p_a_when_second": float(probs[2 * i + 1, 1])
      }
  if new and not jax.process_index():
    with open(cache_file, "a") as f:
      f.write("".join(
          json.dumps({
              **r, "judge": loaded.path,
              "judge_step": loaded.step
          }) + "\n" for r in new.values()))
  return {**cached, **new}


# ---- Statistics --------------------------------------------------------------------------------


def scores(verdicts) -> np.ndarray:
  """A's outcome per pair: 1 a win, 0.5 a tie, 0 a loss."""
  return np.asarray([{"a": 1.0, "tie": 0.5, "b": 0.0}[v] for v in verdicts])


def bootstrap_interval(outcomes: np.ndarray, *, resamples: int, seed: int) -> tuple[float, float]:
  """95% percentile bootstrap interval of 100 * mean(outcomes), resampling pairs."""
  rng = np.random.default_rng(seed)
  means = 100.0 * outcomes[rng.integers(0, len(outcomes), (resamples, len(outcomes)))].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5])
  return float(low), float(high)


def length_controlled(outcomes: np.ndarray, length_a: np.ndarray, length_b: np.ndarray) -> float:
  """AlpacaEval 2's length-controlled win rate for two models: P(A wins) = sigmoid(t + w * tanh(d /
  sd(d))), d the length difference in characters, fitted to the outcomes (ties count half) and read
  at d = 0."""
  difference = np.asarray(length_a, np.float64) - np.asarray(length_b, np.float64)
  spread = difference.std()
  x = np.tanh(difference / spread) if spread > 0 else np.zeros_like(difference)

  def loss(theta):
    logits = theta[0] + theta[1] * x
    p = 1.0 / (1.0 + np.exp(-logits))
    value = np.sum(np.logaddexp(0.0, logits) - outcomes * logits) + 0.5 * LENGTH_L2 * theta @ theta
    error = p - outcomes
    return value, np.asarray([error.sum(), error @ x]) + LENGTH_L2 * theta

  theta = scipy.optimize.minimize(loss, np.zeros(2), jac=True, method="BFGS", options={
      "gtol": 1e-10
  }).x
  return float(100.0 / (1.0 + np.exp(-theta[0])))


def win_rates(verdicts: list[str], pairs: list[Pair], *, resamples: int, seed: int) -> dict:
  """Win rate of A over B with its bootstrap interval and length-controlled rate, overall and per
  category."""

  def stats(members):
    outcomes = scores([verdicts[i] for i in members])
    low, high = bootstrap_interval(outcomes, resamples=resamples, seed=seed)
    return {
        "pairs": len(members),
        "wins": int((outcomes == 1).sum()),
        "losses": int((outcomes == 0).sum()),
        "ties": int((outcomes == 0.5).sum()),
        "win_rate": float(100.0 * outcomes.mean()),
        "ci_low": low,
        "ci_high": high,
        "length_controlled_win_rate": length_controlled(outcomes,
                                                        [len(pairs[i].a) for i in members],
                                                        [len(pairs[i].b) for i in members])
    }

  categories = sorted({p.category for p in pairs})
  result = stats(list(range(len(pairs))))
  result["categories"] = {
      c: stats([i for i, p in enumerate(pairs) if p.category == c]) for c in categories
  }
  return result


# ---- Preference pairs ---------------------------------------------------------------------------


def preference_rows(pairs: list[Pair], model: dict[str, dict] | None, votes: dict[str, str]) -> list[dict]:
  """The decided pairs as preference rows (the `preference` format DPO trains on): {"prompt",
  "chosen", "rejected", "category", "source"}, the people's vote where there is one, else the model
  judge's verdict; ties and undecided pairs left out."""
  rows = []
  for p in pairs:
    verdict, source = votes.get(p.id), "people"
    if verdict is None and model is not None and p.id in model:
      verdict, source = model[p.id]["verdict"], "model"
    if verdict in ("a", "b"):
      chosen, rejected = (p.a, p.b) if verdict == "a" else (p.b, p.a)
      rows.append({"prompt": p.prompt, "chosen": chosen, "rejected": rejected, "category": p.category,
                   "source": source})
  return rows


# ---- The report -------------------------------------------------------------------------------


def report(pairs: list[Pair], model: dict[str, dict] | None, votes: dict[str, str], *,
           resamples: int, seed: int, names: dict) -> dict:
  """judge.json's content: the model judge's and the people's win rates of A over B, and their
  agreement."""
  result = {
      **names, "pairs": len(pairs),
      "identical_answers": sum(p.a.strip() == p.b.strip() for p in pairs)
  }
  sections = {}
  if model is not None:
    verdicts = [model[p.id]["verdict"] for p in pairs]
    judged = [model[p.id] for p in pairs if not model[p.id]["identical"]]
    consistent = sum(j["verdict"] != "tie" for j in judged) / max(len(judged), 1)
    sections["model"] = {**win_rates(verdicts, pairs, resamples=resamples, seed=seed),
                         "position_consistent": consistent}
  voted = [p for p in pairs if p.id in votes]
  if voted:
    rates = win_rates([votes[p.id] for p in voted], voted, resamples=resamples, seed=seed)
    sections["people"] = {**rates, "of_pairs": len(pairs)}
  if not sections:
    raise ValueError("nothing to report: give --judge CKPT, or --serve and vote")
  headline = sections.get("model") or sections["people"]
  headline_keys = ("win_rate", "ci_low", "ci_high", "length_controlled_win_rate", "wins", "losses",
                   "ties")
  result.update({k: headline[k] for k in headline_keys})
  result.update(pairs=headline["pairs"], source="model" if "model" in sections else "people",
                **sections)
  if model is not None and voted:
    agree = [model[p.id]["verdict"] == votes[p.id] for p in voted]
    result["agreement"] = {"pairs": len(voted), "rate": float(np.mean(agree))}
  return result


def write_report(result: dict, out: epath.Path):
  """judge.json, judge.md and judge.png (win rates per category with their intervals)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  (out / "judge.json").write_text(json.dumps(result, indent=1))
  lines = [
      f"# {result['a']} against {result['b']}", "",
      f"Win rate of A: **{result['win_rate']:.1f}** "
      f"(95% CI {result['ci_low']:.1f}-{result['ci_high']:.1f}), "
      f"length-controlled {result['length_controlled_win_rate']:.1f}, "
      f"from the {result['source']}'s verdicts on {result['pairs']} pairs.", ""
  ]
  for source in ("model", "people"):
    if source not in result:
      continue
    section = result[source]
    title = f"Judge {result.get('judge')}" if source == "model" else "People"
    lines += [
        f"## {title}", "",
        "| category | pairs | A wins | ties | B wins | win rate of A | 95% CI "
        "| length-controlled |", "|---|---|---|---|---|---|---|---|"
    ]
    for name, s in [*section["categories"].items(), ("**all**", section)]:
      lines.append(f"| {name} | {s['pairs']} | {s['wins']} | {s['ties']} | {s['losses']} "
                   f"| {s['win_rate']:.1f} | {s['ci_low']:.1f}-{s['ci_high']:.1f} "
                   f"| {s['length_controlled_win_rate']:.1f} |")
    if source == "model":
      lines.append(f"\nBoth orders agreed on {100 * section['position_consistent']:.0f}% of the "
                   "pairs the judge read.")
    lines.append("")
  if "agreement" in result:
    lines.append(f"Judge and people agree on {100 * result['agreement']['rate']:.0f}% of the "
                 f"{result['agreement']['pairs']} pairs both judged.")
  (out / "judge.md").write_text("\n".join(lines) + "\n")

  sources = [s for s in ("model", "people") if s in result]
  names = [*result[sources[0]]["categories"], "all"]
  fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names) * len(sources)))
  for k, source in enumerate(sources):
    section = result[source]
    stats = [section["categories"].get(n, section) if n != "all" else section for n in names]
    y = np.arange(len(names)) * (len(sources) + 1) + k
    rates = np.asarray([s["win_rate"] for s in stats])
    errors = np.asarray([[r - s["ci_low"], s["ci_high"] - r] for r, s in zip(rates, stats)]).T
    ax.barh(y, rates, xerr=errors, capsize=3, label=source)
  ax.axvline(50, color="gray", linestyle="--", linewidth=1)
  ax.set_yticks(np.arange(len(names)) * (len(sources) + 1) + (len(sources) - 1) / 2, names)
  ax.set_xlim(0, 100)
  ax.set_xlabel("win rate of A over B (%), 95% bootstrap interval")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "judge.png", dpi=120)
  plt.close(fig)


# ---- The evaluator -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  """A pairwise entry's own keys (config.evals.<name>)."""
  prompts: str  # JSONL {"prompt"[, "category"]}: what the model being trained answers
  judge: str  # an imported checkpoint (flan_jax.convert import) or a training run's workdir
  baseline: str = ""  # answers JSONL (or a directory of them) to compare with; "": the first
  max_new_tokens: int = 256
  batch_size: int = 8  # prompts answered, and judge prompts scored, together
  resamples: int = 2000  # bootstrap resamples
  seed: int = 0

  def __post_init__(self):
    if not self.prompts or not self.judge:
      raise ValueError(
          "prompts= (a JSONL file of prompts) and judge= (a checkpoint or run) are required")


class Pairwise:
  """The pairwise evaluator (see the module docstring and evaluators/common.py). The prompts are
  read at construction (a bad file stops the run before it trains); the judge is loaded at its
  first comparison and kept."""

  def __init__(self, context, *, name: str, **kwargs):
    self.settings = read_settings(Settings, name, kwargs)
    self.context, self.name = context, name
    self.prompts = inference.read_prompts(self.settings.prompts)
    self._judge = None

  def _directory(self, step: int) -> epath.Path:
    return epath.Path(self.context.workdir) / "eval" / str(step) / self.name

  def _baseline(self, step: int) -> str | None:
    """The answers to compare step's with: the configured baseline, else this evaluator's answers at
    the earliest step before `step` (None at its first step: those answers are the baseline)."""
    if self.settings.baseline:
      return self.settings.baseline
    earlier = [
        int(d.parent.name)
        for d in (epath.Path(self.context.workdir) / "eval").glob(f"*/{self.name}")
        if d.parent.name.isdigit() and int(d.parent.name) < step and (d / "answers.jsonl").exists()
    ]
    return str(self._directory(min(earlier)) / "answers.jsonl") if earlier else None

  def run(self, params, step: int) -> dict:
    context, settings = self.context, self.settings
    loaded = inference.LoadedModel(params, context.model, context.tokenizer,
                                   context.config.data.template.format, step, context.workdir,
                                   context.mesh)
    answers = inference.answer(loaded, [[("user", row["prompt"])] for row in self.prompts],
                               max_new_tokens=settings.max_new_tokens,
                               batch_size=settings.batch_size)
    rows = [{
        "prompt": row["prompt"],
        "answer": answer,
        "category": row.get("category", "")
    } for row, answer in zip(self.prompts, answers)]
    out = self._directory(step)
    if jax.process_index() == 0:
      out.mkdir(parents=True, exist_ok=True)
      (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    baseline = self._baseline(step)
    if baseline is None:
      return {}
    if self._judge is None:
      is_run = (epath.Path(settings.judge) / "config.json").exists()
      self._judge = inference.load(workdir=settings.judge if is_run else "",
                                   checkpoint_dir="" if is_run else settings.judge)
    pairs = make_pairs([(r, f"step {step} answer {i + 1}") for i, r in enumerate(rows)],
                       read_answers(baseline))
    verdicts = model_verdicts(self._judge, pairs, out / "judgments.jsonl",
                              batch_size=settings.batch_size)
    result = report(pairs, verdicts, {}, resamples=settings.resamples, seed=settings.seed, names={
        "a": f"step {step}",
        "b": baseline,
        "judge": settings.judge
    })
    if jax.process_index() == 0:
      write_report(result, out)
    return {
        f"eval/{self.name}/win_rate": result["win_rate"],
        f"eval/{self.name}/lc_win_rate": result["length_controlled_win_rate"]
    }

  def written(self, step: int) -> bool:
    out = self._directory(step)
    return (out / "answers.jsonl").exists() and ((out / "judge.json").exists()
                                                 or self._baseline(step) is None)
