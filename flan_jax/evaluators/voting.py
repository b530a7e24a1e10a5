"""People's votes between two answers: a page on 127.0.0.1 shows one prompt and its two answers in
a random order that only the server knows, and takes a vote (left, right, tie; keys 1, 2 and T or
the arrows). Votes go to SQLite, one transaction each, so a restarted server carries on where it
stopped. What `python -m flan_jax.judge --serve` runs; the win rates come from
evaluators/pairwise.py.
"""

import hashlib
import html
import http.server
import json
import sqlite3
import threading
import time

import numpy as np
from etils import epath

from flan_jax.evaluators.pairwise import Pair

CHOICES = ("left", "right", "tie")
MAX_BODY = 4096  # bytes of a vote request


class VoteStore:
  """Votes in SQLite, one committed transaction per vote; one vote per pair."""

  def __init__(self, path: epath.Path):
    self._connection = sqlite3.connect(str(path), check_same_thread=False)
    self._lock = threading.Lock()
    with self._lock, self._connection:
      self._connection.execute(
          "CREATE TABLE IF NOT EXISTS votes (pair TEXT PRIMARY KEY, winner TEXT NOT NULL, "
          "shown_left TEXT NOT NULL, voted_at REAL NOT NULL)")

  def votes(self) -> dict[str, str]:
    with self._lock:
      return dict(self._connection.execute("SELECT pair, winner FROM votes").fetchall())

  def add(self, pair: str, winner: str, shown_left: str) -> bool:
    """False if the pair already has a vote (nothing is stored)."""
    with self._lock:
      try:
        with self._connection:
          self._connection.execute("INSERT INTO votes VALUES (?, ?, ?, ?)",
                                   (pair, winner, shown_left, time.time()))
      except sqlite3.IntegrityError:
        return False
    return True

  def close(self):
    self._connection.close()


def shown_left(pair: Pair, seed: int) -> str:
  """Which answer ("a" or "b") the page shows on the left: fixed per pair and seed, never sent to
  the page."""
  return "ab"[hashlib.sha256(f"{seed}:{pair.id}".encode()).digest()[0] % 2]


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Which answer is better?</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em;
       color: #222; }
#prompt, .answer { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 6px;
                   padding: 0.8em; }
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
    document.getElementById("message").textContent =
        "Every pair is judged. Stop the server (Ctrl-C) to write the report.";
    return;
  }
  for (const key of ["prompt", "left", "right"]) {
    document.getElementById(key).textContent = current[key];
  }
}
async function next() { show(await (await fetch("/api/next")).json()); }
async function vote(choice) {
  if (current === null) return;
  const response = await fetch("/api/vote", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({pair: current.id, choice: choice})});
  const body = await response.json();
  document.getElementById("message").textContent = response.ok ? "" : body.error;
  await next();
}
document.addEventListener("keydown", (e) => {
  const choice = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right",
                  "t": "tie", "T": "tie", "ArrowDown": "tie"}[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
});
next();
</script></body></html>
"""


def make_server(pairs: list[Pair], store: VoteStore, *, port: int,
                seed: int) -> http.server.ThreadingHTTPServer:
  """The voting page's server on 127.0.0.1:port (0: any free port); the pairs in a shuffled
  order."""
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
      return self.headers.get("Host") in allowed and (origin is None
                                                      or origin.split("://", 1)[-1] in allowed)

    def _state(self) -> dict:
      votes = store.votes()
      pending = next((p for p in order if p.id not in votes), None)
      pair = None
      if pending is not None:
        left, right = (pending.a, pending.b) if shown_left(pending, seed) == "a" else (pending.b,
                                                                                       pending.a)
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
