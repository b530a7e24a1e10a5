"""Judged comparison: pairing answers files, a scripted model judge (both orders, ties, the cache), the
win-rate arithmetic, bootstrap interval and length-controlled rate, mirror symmetry, the voting page's
HTTP interface, and the CLI end to end with a real (tiny, imported) judge against transformers."""

import http.client
import json
import socket
import threading

import numpy as np
import pytest

from flan_jax import inference, judge


def write_answers(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def pairs_of(answers_a, answers_b, categories=None):
  rows = lambda answers: [({"prompt": f"Question {i}?", "answer": a, **({"category": categories[i]} if categories
                                                                        else {})}, f"f:{i + 1}")
                          for i, a in enumerate(answers)]
  return judge.make_pairs(rows(answers_a), rows(answers_b))


def test_answers_are_paired_by_prompt_and_mismatches_named(tmp_path):
  a = write_answers(tmp_path / "a.jsonl", [{"prompt": "p1", "answer": "x", "category": "c"},
                                           {"prompt": "p2", "answer": "y"}, {"prompt": "p1", "answer": "z"}])
  b = write_answers(tmp_path / "b.jsonl", [{"prompt": "p2", "answer": "Y"}, {"prompt": "p1", "answer": "X"},
                                           {"prompt": "p1", "answer": "Z"}])
  pairs = judge.make_pairs(judge.read_answers(a), judge.read_answers(b))
  assert [(p.prompt, p.a, p.b, p.category) for p in pairs] == [("p1", "x", "X", "c"), ("p2", "y", "Y", "all"),
                                                               ("p1", "z", "Z", "all")]
  assert len({p.id for p in pairs}) == 3
  other = write_answers(tmp_path / "c.jsonl", [{"prompt": "p1", "answer": "x"}, {"prompt": "p3", "answer": "y"},
                                               {"prompt": "p1", "answer": "z"}])
  with pytest.raises(ValueError, match=r"1 only in A \(first at .*a.jsonl:2: 'p2'\); 1 only in B \(first at .*c.jsonl:2"):
    judge.make_pairs(judge.read_answers(a), judge.read_answers(other))
  (tmp_path / "bad.jsonl").write_text('{"prompt": "p1", "answer": "x"}\n{"prompt": "p2"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with string \"prompt\" and \"answer\""):
    judge.read_answers(str(tmp_path / "bad.jsonl"))
  directory = tmp_path / "answers"
  directory.mkdir()
  write_answers(directory / "t1.jsonl", [{"prompt": "p1", "answer": "x"}])
  write_answers(directory / "t2.jsonl", [{"prompt": "p2", "answer": "y"}])
  assert [r["prompt"] for r, _ in judge.read_answers(str(directory))] == ["p1", "p2"]


class TextTokenizer:
  path = "scripted"
  chat_template = None

  def generation_prompt(self, conversation, fmt):
    return conversation[-1][1]


def scripted_judge(monkeypatch, prefer, calls):
  """A judge whose log-probabilities for ("1", "2") come from prefer(first, second) -> first's margin."""

  def choose(loaded, prompts, labels, **kw):
    assert labels == judge.LABELS
    calls.extend(prompts)
    out = []
    for prompt in prompts:
      first = prompt.split("[Response 1]\n")[1].split("\n\n[Response 2]")[0]
      second = prompt.split("[Response 2]\n")[1].split("\n\nWhich response")[0]
      margin = prefer(first, second)
      out.append([margin / 2, -margin / 2])
    return np.asarray(out)

  monkeypatch.setattr(inference, "choose", choose)
  return inference.LoadedModel(None, None, TextTokenizer(), "flan", 3, "scripted-judge", None)


def test_both_orders_are_judged_and_disagreement_or_identical_answers_are_ties(tmp_path, monkeypatch):
  calls = []
  # Prefers the longer answer, plus a pull toward whatever is shown first.
  loaded = scripted_judge(monkeypatch, lambda first, second: len(first) - len(second) + 2.5, calls)
  pairs = pairs_of(["a long answer", "short", "same", "abcd"], ["short", "a long answer", "same", "abc"])
  verdicts = judge.model_verdicts(loaded, pairs, tmp_path / "judgments.jsonl")
  assert [verdicts[p.id]["verdict"] for p in pairs] == ["a", "b", "tie", "tie"]  # 1 char: position decides
  assert len(calls) == 6 and not any("[Response 1]\nsame" in c for c in calls)  # identical: no call
  assert verdicts[pairs[2].id]["identical"] and not verdicts[pairs[0].id]["identical"]
  assert verdicts[pairs[0].id]["p_a_when_first"] > verdicts[pairs[0].id]["p_a_when_second"] > 0.5
  calls.clear()
  again = judge.model_verdicts(loaded, pairs, tmp_path / "judgments.jsonl")
  assert not calls and {k: v["verdict"] for k, v in again.items()} == {k: v["verdict"] for k, v in verdicts.items()}
  other = inference.LoadedModel(None, None, TextTokenizer(), "flan", 4, "scripted-judge", None)  # another step: judged anew
  judge.model_verdicts(other, pairs, tmp_path / "judgments.jsonl")
  assert len(calls) == 6


def test_a_judge_without_its_chat_template_is_refused(monkeypatch):
  loaded = inference.LoadedModel(None, None, TextTokenizer(), "chat_template", 0, "ckpt", None)
  with pytest.raises(ValueError, match="judge ckpt: .* chat template, but scripted has none"):
    judge.model_verdicts(loaded, pairs_of(["x"], ["y"]), None)


def test_win_rate_interval_and_length_control():
  pairs = pairs_of(["x"] * 4, ["y"] * 4)
  result = judge.win_rates(["a", "a", "b", "tie"], pairs, resamples=2000, seed=0)
  assert (result["wins"], result["losses"], result["ties"], result["pairs"]) == (2, 1, 1, 4)
  assert result["win_rate"] == 62.5
  assert result["ci_low"] < 62.5 < result["ci_high"] and result["ci_low"] >= 0 and result["ci_high"] <= 100
  assert judge.bootstrap_interval(np.ones(10), resamples=100, seed=0) == (100.0, 100.0)
  narrow = judge.bootstrap_interval(np.asarray([1.0, 0.0] * 200), resamples=2000, seed=0)
  wide = judge.bootstrap_interval(np.asarray([1.0, 0.0] * 5), resamples=2000, seed=0)
  assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3 and narrow[0] < 50 < narrow[1]
  # Outcomes unrelated to length: the length-controlled rate is the win rate.
  outcomes = np.asarray([1, 1, 1, 0] * 10, np.float64)
  balanced = judge.length_controlled(outcomes, [100] * 40, [100] * 40)
  assert balanced == pytest.approx(75.0, abs=0.5)
  # A's answer is longer in 30 of 40 pairs and wins 9 in 10 of those, and 1 in 10 when shorter: 70% raw,
  # even at equal length.
  outcomes = np.asarray([1.0] * 27 + [0.0] * 3 + [1.0] + [0.0] * 9)
  length_a = np.asarray([300] * 30 + [100] * 10)
  assert 100 * outcomes.mean() == 70.0
  assert judge.length_controlled(outcomes, length_a, [200] * 40) == pytest.approx(50.0, abs=1.0)
  assert judge.length_controlled(np.ones(8), [10] * 8, [10] * 8) > 99  # one-sided: finite, near 100


def test_judging_a_against_b_mirrors_b_against_a(tmp_path, monkeypatch):
  loaded = scripted_judge(monkeypatch, lambda first, second: (len(first) - len(second)) * 0.7 + 1.0, [])
  rng = np.random.default_rng(0)
  answers_a = ["x" * int(n) for n in rng.integers(1, 30, 40)]
  answers_b = ["y" * int(n) for n in rng.integers(1, 30, 40)]
  categories = [["math", "email", "code"][i % 3] for i in range(40)]
  reports = []
  for first, second, name in ((answers_a, answers_b, "ab"), (answers_b, answers_a, "ba")):
    pairs = pairs_of(first, second, categories)
    verdicts = judge.model_verdicts(loaded, pairs, tmp_path / f"{name}.jsonl")
    reports.append(judge.report(pairs, verdicts, {}, resamples=1000, seed=0, names={}))
  ab, ba = reports
  assert 0 < ab["ties"] < 40 and 0 < ab["wins"] and 0 < ab["losses"]
  for x, y in [(ab, ba), *((ab["model"]["categories"][c], ba["model"]["categories"][c]) for c in ("math", "email"))]:
    assert (x["wins"], x["ties"], x["losses"]) == (y["losses"], y["ties"], y["wins"])
    assert x["win_rate"] == pytest.approx(100 - y["win_rate"])
    assert x["ci_low"] == pytest.approx(100 - y["ci_high"]) and x["ci_high"] == pytest.approx(100 - y["ci_low"])
    assert x["length_controlled_win_rate"] == pytest.approx(100 - y["length_controlled_win_rate"], abs=1e-6)


def test_report_merges_people_and_model_and_writes_files(tmp_path, monkeypatch):
  loaded = scripted_judge(monkeypatch, lambda first, second: len(first) - len(second), [])
  pairs = pairs_of(["long answer", "s", "same"], ["s", "long answer", "same"], ["c1", "c2", "c1"])
  model = judge.model_verdicts(loaded, pairs, tmp_path / "j.jsonl")
  votes = {pairs[0].id: "a", pairs[1].id: "a"}
  result = judge.report(pairs, model, votes, resamples=200, seed=0, names={"a": "A", "b": "B", "judge": "J"})
  assert result["source"] == "model" and result["pairs"] == 3 and result["win_rate"] == 50.0
  assert result["people"]["pairs"] == 2 and result["people"]["win_rate"] == 100.0
  assert result["agreement"] == {"pairs": 2, "rate": 0.5}
  judge.write_report(result, tmp_path)
  assert json.loads((tmp_path / "judge.json").read_text())["win_rate"] == 50.0
  assert "| c1 | 2 |" in (tmp_path / "judge.md").read_text() and (tmp_path / "judge.png").stat().st_size > 1000
  people_only = judge.report(pairs, None, votes, resamples=200, seed=0, names={})
  assert people_only["source"] == "people" and people_only["win_rate"] == 100.0 and "agreement" not in people_only
  with pytest.raises(ValueError, match="nothing to report"):
    judge.report(pairs, None, {}, resamples=200, seed=0, names={})


@pytest.fixture
def page(tmp_path):
  pairs = pairs_of(["answer a0", "answer a1", "answer a2"], ["answer b0", "answer b1", "answer b2"])
  servers = []

  def start():
    store = judge.VoteStore(tmp_path / "votes.sqlite")
    server = judge.make_server(pairs, store, port=0, seed=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append((server, store))
    return server.server_address[1], store

  yield pairs, start
  for server, store in servers:
    server.shutdown()
    server.server_close()
    store.close()


def request(port, method, path, body=None, headers=None):
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
  data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
  connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
  response = connection.getresponse()
  payload = response.read()
  connection.close()
  return response.status, (json.loads(payload) if response.getheader("Content-Type", "").startswith(
      "application/json") else payload.decode())


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
  placements = {judge.shown_left(p, 0) for p in pairs} | {judge.shown_left(p, s) for p in pairs for s in range(1, 8)}
  assert placements == {"a", "b"}  # both placements occur

  bad = [({"pair": pair.id, "choice": "left"}, {}, 409),  # already voted
         ({"pair": "nope", "choice": "left"}, {}, 404),
         ({"pair": state["pair"]["id"], "choice": "A"}, {}, 400),
         ({"pair": state["pair"]["id"], "choice": "tie", "voter": "me"}, {}, 400),
         (b"{not json", {}, 400),
         (b"[1, 2]", {}, 400),
         (b"x" * (judge.MAX_BODY + 1), {}, 413),
         ({"pair": state["pair"]["id"], "choice": "tie"}, {"Content-Type": "text/plain"}, 415),
         ({"pair": state["pair"]["id"], "choice": "tie"}, {"Host": "evil.example:80"}, 403),
         ({"pair": state["pair"]["id"], "choice": "tie"}, {"Origin": "http://evil.example"}, 403)]
  for body, headers, expected in bad:
    status, answer = request(port, "POST", "/api/vote", body, headers)
    assert status == expected and "error" in answer, (body, headers, status)
  assert request(port, "GET", "/api/next", headers={"Host": "evil.example"})[0] == 403
  assert request(port, "GET", "/etc/passwd")[0] == 404
  with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # no Content-Length
    raw.sendall(f"POST /api/vote HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\r\n".encode())
    assert raw.recv(100).split()[1] == b"411"
  assert len(store.votes()) == 1  # nothing stored by a bad request

  # A restarted server carries on from the stored votes.
  second_port, second_store = start()
  status, state = request(second_port, "GET", "/api/next")
  assert state["voted"] == 1 and state["pair"]["id"] != pair.id
  for _ in range(2):
    status, state = request(second_port, "POST", "/api/vote", {"pair": state["pair"]["id"], "choice": "tie"})
    assert status == 200
  assert state == {"pair": None, "voted": 3, "total": 3} and len(second_store.votes()) == 3


@pytest.mark.slow
def test_cli_judges_with_an_imported_model_as_transformers_would(chat_checkpoint, tmp_path):
  """Text in, verdict out: the judge's verdicts from the CLI are those its transformers twin gives
  (labels' logits after the same chat-formatted prompt, both orders); a judge without its chat
  template is refused."""
  import shutil
  import subprocess
  import sys

  import torch

  from tests.conftest import ROOT
  checkpoint_dir, model, reference = chat_checkpoint
  prompts = ["Is the cat on the mat?", "Where is the dog?", "Then where is the cat?", "Is the dog on the mat?"]
  a = write_answers(tmp_path / "a.jsonl", [{"prompt": p, "answer": ans, "category": c} for p, ans, c in zip(
      prompts, ["Yes.", "The dog sat on the mat.", "Same.", "No, it is not."], ["yes_no", "where", "where", "yes_no"])])
  b = write_answers(tmp_path / "b.jsonl", [{"prompt": p, "answer": ans} for p, ans in zip(
      prompts, ["No.", "On the mat.", "Same.", "The dog? Yes."])])
  run = lambda judge_dir, out: subprocess.run(
      [sys.executable, "-m", "flan_jax.judge", f"--judge={judge_dir}", f"--answers_a={a}", f"--answers_b={b}",
       f"--out={out}", "--resamples=200"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  result = run(checkpoint_dir, tmp_path / "out")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "judge.json").read_text())
  for key in ("win_rate", "ci_low", "ci_high", "length_controlled_win_rate", "pairs", "ties"):
    assert key in report
  assert report["pairs"] == 4 and set(report["model"]["categories"]) == {"yes_no", "where"}
  assert (tmp_path / "out" / "judge.png").exists() and "win rate of A" in (tmp_path / "out" / "judge.md").read_text()

  label_ids = [reference(label, add_special_tokens=False).input_ids for label in judge.LABELS]
  assert all(len(ids) == 1 for ids in label_ids)
  def margin(prompt, first, second):  # logit of "1" minus logit of "2", from transformers
    text = judge.JUDGE_PROMPT.format(prompt=prompt, first=first, second=second)
    ids = reference.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
      logits = model(torch.tensor([ids])).logits[0, -1]
    return float(logits[label_ids[0][0]] - logits[label_ids[1][0]])
  pairs = judge.make_pairs(judge.read_answers(a), judge.read_answers(b))
  judged = {r["pair"]: r for r in map(json.loads, (tmp_path / "out" / "judgments.jsonl").read_text().splitlines())}
  for p in pairs:
    if p.a == p.b:
      assert judged[p.id]["identical"] and judged[p.id]["verdict"] == "tie"
      continue
    first, second = margin(p.prompt, p.a, p.b), margin(p.prompt, p.b, p.a)
    assert judged[p.id]["verdict"] == judge.combine(first, second)
    assert judged[p.id]["p_a_when_first"] == pytest.approx(1 / (1 + np.exp(-first)), abs=1e-3)
    assert judged[p.id]["p_a_when_second"] == pytest.approx(1 / (1 + np.exp(second)), abs=1e-3)

  no_template = tmp_path / "no_template"
  shutil.copytree(checkpoint_dir, no_template)
  config = json.loads((no_template / "hf" / "tokenizer_config.json").read_text())
  del config["chat_template"]
  (no_template / "hf" / "tokenizer_config.json").write_text(json.dumps(config))
  result = run(no_template, tmp_path / "out2")
  assert result.returncode != 0 and "chat template, but" in result.stderr


@pytest.mark.slow
def test_train_on_self_instruct_data_then_judge_against_the_start_is_one_command(chat_checkpoint, tmp_path):
  """The README loop on a tiny imported model: configs/self_instruct.py trains on generated rows with
  the human seed tasks held out, evaluation writes answers at step 0 and after training, and judge
  compares the two."""
  import subprocess
  import sys

  from tests.conftest import ROOT
  checkpoint_dir = chat_checkpoint[0]
  generated = [{"instruction": f"Is the cat on the mat number {i}?", "input": "", "output": "Yes." if i % 2 else "No.",
                "category": "classification" if i % 3 else "generation", "is_classification": bool(i % 3), "round": 0}
               for i in range(24)]
  seeds = [{"instruction": f"Where is the dog {i}?", "instances": [{"input": "", "output": "On the mat."}],
            "is_classification": False} for i in range(5)]
  write_answers(tmp_path / "generated.jsonl", generated)
  write_answers(tmp_path / "seeds.jsonl", seeds)
  cli = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                                     timeout=900)
  workdir = tmp_path / "run"
  result = cli("flan_jax.train", f"--config=configs/self_instruct.py:checkpoint={checkpoint_dir},"
               f"data={tmp_path / 'generated.jsonl'},seeds={tmp_path / 'seeds.jsonl'},lora=4", f"--workdir={workdir}",
               "--config.train.steps=2", "--config.train.checkpoint_every=2", "--config.data.seq_len=128",
               "--config.loss.chunk_len=64", "--config.evals.held_out.max_examples=4",
               "--config.evals.held_out.max_new_tokens=8",
               "--config.optim.learning_rate=1e-2")
  assert result.returncode == 0, result.stderr[-3000:]
  for step in (0, 2):
    rows = [json.loads(line) for line in (workdir / "eval" / str(step) / "answers" / "seed_tasks.jsonl")
            .read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [f"Where is the dog {i}?" for i in range(4)]
    assert {r["category"] for r in rows} == {"human_seeds"}
  result = cli("flan_jax.judge", f"--judge={checkpoint_dir}", f"--answers_a={workdir / 'eval' / '2' / 'answers'}",
               f"--answers_b={workdir / 'eval' / '0' / 'answers'}", f"--out={workdir / 'judged'}", "--resamples=100")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "judged" / "judge.json").read_text())
  assert report["pairs"] == 4 and set(report["model"]["categories"]) == {"human_seeds"}


def test_served_votes_become_the_report_when_the_server_is_stopped(tmp_path):
  """The CLI as people use it: --serve without a model judge, a vote, SIGTERM (as Ctrl-C): the report
  holds the people's verdict."""
  import re
  import signal
  import subprocess
  import sys

  from tests.conftest import ROOT
  a = write_answers(tmp_path / "a.jsonl", [{"prompt": "Say hi.", "answer": "Hi!"}])
  b = write_answers(tmp_path / "b.jsonl", [{"prompt": "Say hi.", "answer": "No."}])
  process = subprocess.Popen([sys.executable, "-m", "flan_jax.judge", f"--answers_a={a}", f"--answers_b={b}",
                              f"--out={tmp_path / 'out'}", "--serve", "--port=0"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    found = None
    while found is None:
      found = re.search(r"127\.0\.0\.1:(\d+)/", process.stdout.readline())
    port = int(found.group(1))
    status, state = request(port, "GET", "/api/next")
    pair = state["pair"]
    status, _ = request(port, "POST", "/api/vote", {"pair": pair["id"], "choice": "left" if pair["left"] == "Hi!"
                                                    else "right"})
    assert status == 200
  finally:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
  assert process.returncode == 0, process.stderr.read()[-2000:]
  report = json.loads((tmp_path / "out" / "judge.json").read_text())
  assert report["source"] == "people" and report["win_rate"] == 100.0 and report["pairs"] == 1
