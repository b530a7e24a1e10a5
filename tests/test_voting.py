"""The voting page's HTTP interface: votes stored, a restarted server resuming, bad votes
rejected."""

import socket
import threading

import pytest

from flan_jax.evaluators import pairwise, voting
from tests.helpers import request


def pairs_of(answers_a, answers_b):
  return pairwise.make_pairs(*([({
      "prompt": f"Question {i}?",
      "answer": a
  }, f"f:{i + 1}") for i, a in enumerate(answers)] for answers in (answers_a, answers_b)))


@pytest.fixture
def page(tmp_path):
  pairs = pairs_of(["answer a0", "answer a1", "answer a2"], ["answer b0", "answer b1", "answer b2"])
  servers = []

  def start():
    store = voting.VoteStore(tmp_path / "votes.sqlite")
    server = voting.make_server(pairs, store, port=0, seed=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append((server, store))
    return server.server_address[1], store

  yield pairs, start
  for server, store in servers:
    server.shutdown()
    server.server_close()
    store.close()


def test_voting_page_stores_resumes_and_rejects_bad_votes(page):
  pairs, start = page
  port, store = start()
  status, html = request(port, "GET", "/")
  assert status == 200 and "Which answer is better?" in html and "ArrowLeft" in html
  status, state = request(port, "GET", "/api/next")
  assert status == 200 and (state["voted"], state["total"]) == (0, 3)
  shown = state["pair"]
  assert set(shown) == {"id", "prompt", "left", "right"}  # nothing says which model is which
  pair = next(p for p in pairs if p.id == shown["id"])
  left_is_a = shown["left"] == pair.a
  assert {shown["left"], shown["right"]} == {pair.a, pair.b}

  status, state = request(port, "POST", "/api/vote", {"pair": pair.id, "choice": "left"})
  assert status == 200 and state["voted"] == 1 and state["pair"]["id"] != pair.id
  assert store.votes() == {pair.id: "a" if left_is_a else "b"}
  placements = {voting.shown_left(p, 0)
                for p in pairs} | {voting.shown_left(p, s) for p in pairs for s in range(1, 8)}
  assert placements == {"a", "b"}  # both placements occur

  bad = [
      ({
          "pair": pair.id,
          "choice": "left"
      }, {}, 409),  # already voted
      ({
          "pair": "nope",
          "choice": "left"
      }, {}, 404),
      ({
          "pair": state["pair"]["id"],
          "choice": "A"
      }, {}, 400),
      ({
          "pair": state["pair"]["id"],
          "choice": "tie",
          "voter": "me"
      }, {}, 400),
      (b"{not json", {}, 400),
      (b"[1, 2]", {}, 400),
      (b"x" * (voting.MAX_BODY + 1), {}, 413),
      ({
          "pair": state["pair"]["id"],
          "choice": "tie"
      }, {
          "Content-Type": "text/plain"
      }, 415),
      ({
          "pair": state["pair"]["id"],
          "choice": "tie"
      }, {
          "Host": "evil.example:80"
      }, 403),
      ({
          "pair": state["pair"]["id"],
          "choice": "tie"
      }, {
          "Origin": "http://evil.example"
      }, 403)
  ]
  for body, headers, expected in bad:
    status, answer = request(port, "POST", "/api/vote", body, headers)
    assert status == expected and "error" in answer, (body, headers, status)
  assert request(port, "GET", "/api/next", headers={"Host": "evil.example"})[0] == 403
  assert request(port, "GET", "/etc/passwd")[0] == 404
  with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # no Content-Length
    raw.sendall(
        f"POST /api/vote HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n\r\n".encode())
    assert raw.recv(100).split()[1] == b"411"
  assert len(store.votes()) == 1  # nothing stored by a bad request

  # A restarted server carries on from the stored votes.
  second_port, second_store = start()
  status, state = request(second_port, "GET", "/api/next")
  assert state["voted"] == 1 and state["pair"]["id"] != pair.id
  for _ in range(2):
    status, state = request(second_port, "POST", "/api/vote", {
        "pair": state["pair"]["id"],
        "choice": "tie"
    })
    assert status == 200
  assert state == {"pair": None, "voted": 3, "total": 3} and len(second_store.votes()) == 3
