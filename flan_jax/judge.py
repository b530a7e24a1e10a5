r"""Which of two models answers the same prompts better: a model as judge, people, or both.

  python -m flan_jax.judge --judge CKPT --answers_a A.jsonl --answers_b B.jsonl --out DIR
  python -m flan_jax.judge --answers_a A.jsonl --answers_b B.jsonl --out DIR --serve [--port 8765]

Answers are JSONL rows {"prompt", "answer"} with an optional "category", as `flan_jax.generate
--prompts ... --out` and `flan_jax.evaluate` (eval/<step>/answers/) write them; a directory stands
for all of its *.jsonl files. A and B must answer the same prompts (a prompt asked twice pairs in
file order).

The model judge (`--judge`, an imported checkpoint or a training run's workdir) reads both answers
in its own chat format and its verdict is read from its probabilities of the labels "1" and "2" as
the first token of its reply (as AlpacaEval reads its judge), not from free text. Every pair is
judged in both orders; a pair whose two verdicts disagree (position bias) or are exactly even is a
tie, and identical answers are a tie without a call. Verdicts are kept in DIR/judgments.jsonl and
reused when the same judge meets the same pair again.

People vote with `--serve`: a page on 127.0.0.1 shows one prompt and its two answers in a random
order that only the server knows, and takes a vote (left, right, tie; keys 1, 2 and T or the
arrows). Votes go to DIR/votes.sqlite, one transaction each, so a restarted server carries on where
it stopped; stopping it (Ctrl-C or SIGTERM) writes the report.

Win rate of A over B = (wins + ties / 2) / pairs, with a percentile bootstrap interval over pairs
(`--resamples`, 95%), per category and overall; beside it the length-controlled win rate of
AlpacaEval 2 (Dubois et al. 2024): a logistic regression of the outcome on an intercept and
tanh(length difference / its standard deviation), read at equal length (100 * sigmoid(intercept)).
With two models there is no per-instruction difficulty term. DIR/judge.json (the model judge's
figures at the top when there is one, else the people's; both under "model" and "people", and their
agreement on pairs both judged), judge.md and judge.png.
"""

import dataclasses
import hashlib
import html
import http.server
import json
import signal
import sqlite3
import threading
import time

import jax
import numpy as np
import scipy.optimize
from absl import app, flags
from etils import epath

from flan_jax import commands, distributed, inference
from flan_jax.data import templates

LABELS = ("1", "2")  # the judge names the better answer's position
JUDGE_PROMPT = """Compare two responses to the same request and decide which one is better: more helpful, \
correct, relevant and complete. Do not let their order or length decide.

[Request]
{prompt}

[Response 1]
{first}

[Response 2]
{second}

Which response is better? Reply with 1 or 2 only."""
WINNERS = ("a", "b", "tie")
CHOICES = ("left", "right", "tie")
MAX_BODY = 4096  # bytes of a vote request
LENGTH_L2 = 0.01  # ridge on the length-controlled fit, so one-sided outcomes give a finite intercept


@dataclasses.dataclass(frozen=True)
class Pair:
  id: str  # a hash of the prompt, its occurrence and both answers: a vote never outlives an edited answer
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
    detail = [f"{len(keys)} only in {name} (first at {rows[keys[0]][1]}: {keys[0][0][:60]!r})"
              for name, keys, rows in (("A", only_a, a), ("B", only_b, b)) if keys]
    raise ValueError("the answers files answer different prompts: " + "; ".join(detail))
  pairs = []
  for key, (row_a, _) in a.items():
    row_b = b[key][0]
    digest = hashlib.sha256(json.dumps([*key, row_a["answer"], row_b["answer"]]).encode()).hexdigest()[:16]
    category = row_a.get("category") or row_b.get("category") or "all"
    pairs.append(Pair(digest, key[0], row_a["answer"], row_b["answer"], category))
  return pairs


# ---- The model judge ---------------------------------------------------------------------------

def check_judge(loaded: inference.LoadedModel):
  if loaded.fmt == templates.CHAT_TEMPLATE and loaded.tokenizer.chat_template is None:
    raise ValueError(f"judge {loaded.path}: it is to be prompted through its tokenizer's chat template, but "
                     f"{loaded.tokenizer.path} has none (tokenizer_config.json's chat_template or chat_template.jinja)")


def judge_prompt(loaded: inference.LoadedModel, prompt: str, first: str, second: str) -> list[int]:
  text = JUDGE_PROMPT.format(prompt=prompt.strip(), first=first.strip(), second=second.strip())
  return loaded.tokenizer.generation_prompt([("user", text)], loaded.fmt)


def combine(first_a: float, first_b: float) -> str:
  """The verdict of two orders: first_a is P(label 1) - P(label 2) with A shown first, first_b the same
  with B first. Both orders must prefer the same answer; otherwise (or if even) it is a tie."""
  a_first_says = "a" if first_a > 0 else "b" if first_a < 0 else "tie"
  b_first_says = "b" if first_b > 0 else "a" if first_b < 0 else "tie"
  return a_first_says if a_first_says == b_first_says else "tie"


def model_verdicts(loaded: inference.LoadedModel, pairs: list[Pair], cache_file: epath.Path, *,
                   batch_size: int = 8) -> dict[str, dict]:
  """{pair id: judgment}; judgments this judge already made are read from cache_file, new ones added."""
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
    prompts = [judge_prompt(loaded, p.prompt, *order) for p in todo for order in ((p.a, p.b), (p.b, p.a))]
    log_probs = inference.choose(loaded, prompts, LABELS, batch_size=batch_size)
    probs = np.exp(log_probs - log_probs.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)  # of the two labels
    for i, p in enumerate(todo):
      a_first, b_first = log_probs[2 * i], log_probs[2 * i + 1]
      new[p.id] = {"pair": p.id, "verdict": combine(a_first[0] - a_first[1], b_first[0] - b_first[1]),
                   "identical": False, "p_a_when_first": float(probs[2 * i, 0]),
                   "p_a_when_second": float(probs[2 * i + 1, 1])}
  if new and not jax.process_index():
    with open(cache_file, "a") as f:
      f.write("".join(json.dumps({**r, "judge": loaded.path, "judge_step": loaded.step}) + "\n" for r in new.values()))
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
  """AlpacaEval 2's length-controlled win rate for two models: P(A wins) = sigmoid(t + w * tanh(d / sd(d))),
  d the length difference in characters, fitted to the outcomes (ties count half) and read at d = 0."""
  difference = np.asarray(length_a, np.float64) - np.asarray(length_b, np.float64)
  spread = difference.std()
  x = np.tanh(difference / spread) if spread > 0 else np.zeros_like(difference)

  def loss(theta):
    logits = theta[0] + theta[1] * x
    p = 1.0 / (1.0 + np.exp(-logits))
    value = np.sum(np.logaddexp(0.0, logits) - outcomes * logits) + 0.5 * LENGTH_L2 * theta @ theta
    error = p - outcomes
    return value, np.asarray([error.sum(), error @ x]) + LENGTH_L2 * theta

  theta = scipy.optimize.minimize(loss, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-10}).x
  return float(100.0 / (1.0 + np.exp(-theta[0])))


def win_rates(verdicts: list[str], pairs: list[Pair], *, resamples: int, seed: int) -> dict:
  """Win rate of A over B with its bootstrap interval and length-controlled rate, overall and per category."""

  def stats(members):
    outcomes = scores([verdicts[i] for i in members])
    low, high = bootstrap_interval(outcomes, resamples=resamples, seed=seed)
    return {"pairs": len(members), "wins": int((outcomes == 1).sum()), "losses": int((outcomes == 0).sum()),
            "ties": int((outcomes == 0.5).sum()), "win_rate": float(100.0 * outcomes.mean()), "ci_low": low,
            "ci_high": high,
            "length_controlled_win_rate": length_controlled(outcomes, [len(pairs[i].a) for i in members],
                                                            [len(pairs[i].b) for i in members])}

  categories = sorted({p.category for p in pairs})
  result = stats(list(range(len(pairs))))
  result["categories"] = {c: stats([i for i, p in enumerate(pairs) if p.category == c]) for c in categories}
  return result


# ---- Votes of people ---------------------------------------------------------------------------

class VoteStore:
  """Votes in SQLite, one committed transaction per vote; one vote per pair."""

  def __init__(self, path: epath.Path):
    self._connection = sqlite3.connect(str(path), check_same_thread=False)
    self._lock = threading.Lock()
    with self._lock, self._connection:
      self._connection.execute("CREATE TABLE IF NOT EXISTS votes (pair TEXT PRIMARY KEY, winner TEXT NOT NULL, "
                               "shown_left TEXT NOT NULL, voted_at REAL NOT NULL)")

  def votes(self) -> dict[str, str]:
    with self._lock:
      return dict(self._connection.execute("SELECT pair, winner FROM votes").fetchall())

  def add(self, pair: str, winner: str, shown_left: str) -> bool:
    """False if the pair already has a vote (nothing is stored)."""
    with self._lock:
      try:
        with self._connection:
          self._connection.execute("INSERT INTO votes VALUES (?, ?, ?, ?)", (pair, winner, shown_left, time.time()))
      except sqlite3.IntegrityError:
        return False
    return True

  def close(self):
    self._connection.close()


def shown_left(pair: Pair, seed: int) -> str:
  """Which answer ("a" or "b") the page shows on the left: fixed per pair and seed, never sent to the page."""
  return "ab"[hashlib.sha256(f"{seed}:{pair.id}".encode()).digest()[0] % 2]


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Which answer is better?</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
#prompt, .answer { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 6px; padding: 0.8em; }
#prompt { background: #f4f4f4; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: 1em 0; }
button { font-size: 1em; padding: 0.5em 1.2em; margin-right: 0.5em; cursor: pointer; }
#progress { color: #666; float: right; }
</style></head>
<body>
<h1>Which answer is better? <span id="progress"></span></h1>
<div id="task">
<h3>Request</h3><div id="prompt"></div>
<div class="answers"><div><h3>Answer 1</h3><div class="answer" id="left"></div></div>
<div><h3>Answer 2</h3><div class="answer" id="right"></div></div></div>
<button id="vote-left" onclick="vote('left')">Answer 1 is better [1 / &larr;]</button>
<button id="vote-tie" onclick="vote('tie')">Tie [T / &darr;]</button>
<button id="vote-right" onclick="vote('right')">Answer 2 is better [2 / &rarr;]</button>
</div>
<p id="message"></p>
<script>
let current = null;
function show(state) {
  document.getElementById("progress").textContent = state.voted + " / " + state.total + " judged";
  current = state.pair;
  document.getElementById("task").hidden = current === null;
  if (current === null) {
    document.getElementById("message").textContent = "Every pair is judged. Stop the server (Ctrl-C) to write the report.";
    return;
  }
  for (const key of ["prompt", "left", "right"]) document.getElementById(key).textContent = current[key];
}
async function next() { show(await (await fetch("/api/next")).json()); }
async function vote(choice) {
  if (current === null) return;
  const response = await fetch("/api/vote", {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify({pair: current.id, choice: choice})});
  const body = await response.json();
  document.getElementById("message").textContent = response.ok ? "" : body.error;
  await next();
}
document.addEventListener("keydown", (e) => {
  const choice = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right", "t": "tie", "T": "tie",
                  "ArrowDown": "tie"}[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
});
next();
</script></body></html>
"""


def make_server(pairs: list[Pair], store: VoteStore, *, port: int, seed: int) -> http.server.ThreadingHTTPServer:
  """The voting page's server on 127.0.0.1:port (0: any free port). The pairs come in a shuffled order."""
  by_id = {p.id: p for p in pairs}
  order = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))]

  class Handler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *args):  # no line per request on the terminal
      pass

    def _send(self, status: int, body, content_type: str = "application/json"):
      data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
      self.send_response(status)
      self.send_header("Content-Type", f"{content_type}; charset=utf-8")
      self.send_header("Content-Length", str(len(data)))
      self.send_header("Cache-Control", "no-store")
      self.end_headers()
      self.wfile.write(data)

    def _error(self, status: int, message: str):
      self._send(status, {"error": message})

    def _host_ok(self) -> bool:
      # Another site's page (DNS rebinding, cross-site form posts) must not read or vote.
      port = self.server.server_address[1]
      allowed = {f"127.0.0.1:{port}", f"localhost:{port}"}
      origin = self.headers.get("Origin")
      return self.headers.get("Host") in allowed and (origin is None or origin.split("://", 1)[-1] in allowed)

    def _state(self) -> dict:
      votes = store.votes()
      pending = next((p for p in order if p.id not in votes), None)
      pair = None
      if pending is not None:
        left, right = (pending.a, pending.b) if shown_left(pending, seed) == "a" else (pending.b, pending.a)
        pair = {"id": pending.id, "prompt": pending.prompt, "left": left, "right": right}
      return {"pair": pair, "voted": sum(p.id in votes for p in pairs), "total": len(pairs)}

    def do_GET(self):
      if not self._host_ok():
        return self._error(403, "requests must come from this machine's page")
      if self.path == "/":
        return self._send(200, PAGE, "text/html")
      if self.path == "/api/next":
        return self._send(200, self._state())
      return self._error(404, f"no such page: {html.escape(self.path)}")

    def do_POST(self):
      if not self._host_ok():
        return self._error(403, "requests must come from this machine's page")
      if self.path != "/api/vote":
        return self._error(404, f"no such endpoint: {html.escape(self.path)}")
      length = self.headers.get("Content-Length")
      if length is None or not length.isdigit():
        return self._error(411, "a vote needs a Content-Length")
      if int(length) > MAX_BODY:
        return self._error(413, f"a vote is at most {MAX_BODY} bytes")
      if self.headers.get_content_type() != "application/json":
        return self._error(415, "a vote is JSON (Content-Type: application/json)")
      try:
        vote = json.loads(self.rfile.read(int(length)))
      except (json.JSONDecodeError, UnicodeDecodeError):
        return self._error(400, "a vote is a JSON object {\"pair\": ..., \"choice\": ...}")
      if not isinstance(vote, dict) or set(vote) != {"pair", "choice"}:
        return self._error(400, "a vote is a JSON object with exactly \"pair\" and \"choice\"")
      if vote["choice"] not in CHOICES:
        return self._error(400, f"choice must be one of {', '.join(CHOICES)}")
      pair = by_id.get(vote["pair"]) if isinstance(vote["pair"], str) else None
      if pair is None:
        return self._error(404, "no such pair")
      left = shown_left(pair, seed)
      winner = {"left": left, "right": "b" if left == "a" else "a", "tie": "tie"}[vote["choice"]]
      if not store.add(pair.id, winner, left):
        return self._error(409, "this pair already has a vote")
      return self._send(200, self._state())

  return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


# ---- The report --------------------------------------------------------------------------------

def report(pairs: list[Pair], model: dict[str, dict] | None, votes: dict[str, str], *, resamples: int,
           seed: int, names: dict) -> dict:
  """judge.json's content: the model judge's and the people's win rates of A over B, and their agreement."""
  result = {**names, "pairs": len(pairs), "identical_answers": sum(p.a.strip() == p.b.strip() for p in pairs)}
  sections = {}
  if model is not None:
    verdicts = [model[p.id]["verdict"] for p in pairs]
    judged = [model[p.id] for p in pairs if not model[p.id]["identical"]]
    sections["model"] = {**win_rates(verdicts, pairs, resamples=resamples, seed=seed),
                         "position_consistent": sum(j["verdict"] != "tie" for j in judged) / max(len(judged), 1)}
  voted = [p for p in pairs if p.id in votes]
  if voted:
    sections["people"] = {**win_rates([votes[p.id] for p in voted], voted, resamples=resamples, seed=seed),
                          "of_pairs": len(pairs)}
  if not sections:
    raise ValueError("nothing to report: give --judge CKPT, or --serve and vote")
  headline = sections.get("model") or sections["people"]
  result.update({k: headline[k] for k in ("win_rate", "ci_low", "ci_high", "length_controlled_win_rate", "wins",
                                          "losses", "ties")})
  result.update(pairs=headline["pairs"], source="model" if "model" in sections else "people", **sections)
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
  lines = [f"# {result['a']} against {result['b']}", "",
           f"Win rate of A: **{result['win_rate']:.1f}** (95% CI {result['ci_low']:.1f}-{result['ci_high']:.1f}), "
           f"length-controlled {result['length_controlled_win_rate']:.1f}, from the {result['source']}'s verdicts on "
           f"{result['pairs']} pairs.", ""]
  for source in ("model", "people"):
    if source not in result:
      continue
    section = result[source]
    lines += [f"## {'Judge ' + str(result.get('judge')) if source == 'model' else 'People'}", "",
              "| category | pairs | A wins | ties | B wins | win rate of A | 95% CI | length-controlled |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in [*section["categories"].items(), ("**all**", section)]:
      lines.append(f"| {name} | {s['pairs']} | {s['wins']} | {s['ties']} | {s['losses']} | {s['win_rate']:.1f} | "
                   f"{s['ci_low']:.1f}-{s['ci_high']:.1f} | {s['length_controlled_win_rate']:.1f} |")
    if source == "model":
      lines.append(f"\nBoth orders agreed on {100 * section['position_consistent']:.0f}% of the pairs the judge read.")
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


def _stop(signum, frame):
  raise KeyboardInterrupt


def main(argv):
  commands.start(argv)
  flag = flags.FLAGS
  out = epath.Path(flag.out)
  out.mkdir(parents=True, exist_ok=True)
  pairs = make_pairs(read_answers(flag.answers_a), read_answers(flag.answers_b))
  names = {"a": flag.answers_a, "b": flag.answers_b, "judge": flag.judge}
  model = None
  if flag.judge:
    is_run = (epath.Path(flag.judge) / "config.json").exists()
    distributed.initialize()  # every process judges; process 0 alone writes and serves
    loaded = inference.load(workdir=flag.judge if is_run else "", checkpoint_dir="" if is_run else flag.judge)
    model = model_verdicts(loaded, pairs, out / "judgments.jsonl", batch_size=flag.batch_size)
    if jax.process_index():
      return
  store = VoteStore(out / "votes.sqlite")

  def write():
    if model is None and not store.votes():
      print("No verdicts yet: no report written.")
      return
    result = report(pairs, model, store.votes(), resamples=flag.resamples, seed=flag.seed, names=names)
    write_report(result, out)
    print((out / "judge.md").read_text())

  if not flag.serve and model is None and not store.votes():
    raise app.UsageError("nothing to report: give --judge CKPT, or --serve to collect people's votes")
  write()
  if flag.serve:
    server = make_server(pairs, store, port=flag.port, seed=flag.seed)
    signal.signal(signal.SIGTERM, _stop)  # `kill` stops it as Ctrl-C does: the report is written
    print(f"Voting page: http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C stops it and writes the report)",
          flush=True)
    try:
      server.serve_forever()
    except KeyboardInterrupt:
      pass
    finally:
      server.server_close()
    write()
  store.close()


if __name__ == "__main__":
  flags.DEFINE_string("judge", None, "The judge: an imported checkpoint (flan_jax.convert) or a run's workdir.")
  flags.DEFINE_string("answers_a", None, "A's answers: JSONL {prompt, answer[, category]} or a directory of them.",
                      required=True)
  flags.DEFINE_string("answers_b", None, "B's answers, to the same prompts.", required=True)
  flags.DEFINE_string("out", None, "Directory for judge.json, judge.md, judge.png, judgments and votes.",
                      required=True)
  flags.DEFINE_bool("serve", False, "Serve the voting page for people on 127.0.0.1 until Ctrl-C.")
  flags.DEFINE_integer("port", 8765, "The voting page's port (0: any free one).")
  flags.DEFINE_integer("batch_size", 8, "Judge prompts scored together.")
  flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")
  flags.DEFINE_integer("seed", 0, "Seed of the bootstrap, the page's order and its left/right placement.")
  app.run(main)
