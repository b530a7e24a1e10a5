"""The judge command end to end: a real (tiny, imported) judge against transformers, and people's
votes served and reported."""

import json

import numpy as np
import pytest

from flan_jax.evaluators import pairwise
from tests.helpers import request, write_answers


@pytest.mark.slow
def test_cli_judges_with_an_imported_model_as_transformers_would(chat_checkpoint, tmp_path):
  """Text in, verdict out: the judge's verdicts from the CLI are those its transformers twin gives
  (labels' logits after the same chat-formatted prompt, both orders); a judge without its chat
  template is refused."""
  import shutil
  import subprocess
  import sys

  import torch

  from tests.helpers import ROOT
  checkpoint_dir, model, reference = chat_checkpoint
  prompts = [
      "Is the cat on the mat?", "Where is the dog?", "Then where is the cat?",
      "Is the dog on the mat?"
  ]
  a = write_answers(tmp_path / "a.jsonl", [{
      "prompt": p,
      "answer": ans,
      "category": c
  } for p, ans, c in zip(prompts, ["Yes.", "The dog sat on the mat.", "Same.", "No, it is not."],
                         ["yes_no", "where", "where", "yes_no"])])
  b = write_answers(tmp_path / "b.jsonl", [{
      "prompt": p,
      "answer": ans
  } for p, ans in zip(prompts, ["No.", "On the mat.", "Same.", "The dog? Yes."])])
  run = lambda judge_dir, out: subprocess.run([
      sys.executable, "-m", "flan_jax.judge", f"--judge={judge_dir}", f"--answers_a={a}",
      f"--answers_b={b}", f"--out={out}", "--resamples=200"
  ], cwd=ROOT, capture_output=True, text=True, timeout=600)
  result = run(checkpoint_dir, tmp_path / "out")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "judge.json").read_text())
  for key in ("win_rate", "ci_low", "ci_high", "length_controlled_win_rate", "pairs", "ties"):
    assert key in report
  assert report["pairs"] == 4 and set(report["model"]["categories"]) == {"yes_no", "where"}
  assert (tmp_path / "out" / "judge.png").exists() and "win rate of A" in (tmp_path / "out" /
                                                                           "judge.md").read_text()

  label_ids = [reference(label, add_special_tokens=False).input_ids for label in pairwise.LABELS]
  assert all(len(ids) == 1 for ids in label_ids)

  def margin(prompt, first, second):  # logit of "1" minus logit of "2", from transformers
    text = pairwise.JUDGE_PROMPT.format(prompt=prompt, first=first, second=second)
    ids = reference.apply_chat_template([{
        "role": "user",
        "content": text
    }], add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
      logits = model(torch.tensor([ids])).logits[0, -1]
    return float(logits[label_ids[0][0]] - logits[label_ids[1][0]])

  pairs = pairwise.make_pairs(pairwise.read_answers(a), pairwise.read_answers(b))
  judged = {
      r["pair"]: r
      for r in map(json.loads, (tmp_path / "out" / "judgments.jsonl").read_text().splitlines())
  }
  for p in pairs:
    if p.a == p.b:
      assert judged[p.id]["identical"] and judged[p.id]["verdict"] == "tie"
      continue
    first, second = margin(p.prompt, p.a, p.b), margin(p.prompt, p.b, p.a)
    assert judged[p.id]["verdict"] == pairwise.combine(first, second)
    assert judged[p.id]["p_a_when_first"] == pytest.approx(1 / (1 + np.exp(-first)), abs=1e-3)
    assert judged[p.id]["p_a_when_second"] == pytest.approx(1 / (1 + np.exp(second)), abs=1e-3)

  no_template = tmp_path / "no_template"
  shutil.copytree(checkpoint_dir, no_template)
  config = json.loads((no_template / "hf" / "tokenizer_config.json").read_text())
  del config["chat_template"]
  (no_template / "hf" / "tokenizer_config.json").write_text(json.dumps(config))
  result = run(no_template, tmp_path / "out2")
  assert result.returncode != 0 and "chat template, but" in result.stderr


def test_served_votes_become_the_report_when_the_server_is_stopped(tmp_path):
  """The CLI as people use it: --serve without a model judge, a vote, SIGTERM (as Ctrl-C): the
  report holds the people's verdict."""
  import re
  import signal
  import subprocess
  import sys

  from tests.helpers import ROOT
  a = write_answers(tmp_path / "a.jsonl", [{"prompt": "Say hi.", "answer": "Hi!"}])
  b = write_answers(tmp_path / "b.jsonl", [{"prompt": "Say hi.", "answer": "No."}])
  process = subprocess.Popen([
      sys.executable, "-m", "flan_jax.judge", f"--answers_a={a}", f"--answers_b={b}",
      f"--out={tmp_path / 'out'}", "--serve", "--port=0"
  ], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    found = None
    while found is None:
      found = re.search(r"127\.0\.0\.1:(\d+)/", process.stdout.readline())
    port = int(found.group(1))
    status, state = request(port, "GET", "/api/next")
    pair = state["pair"]
    status, _ = request(port, "POST", "/api/vote", {
        "pair": pair["id"],
        "choice": "left" if pair["left"] == "Hi!" else "right"
    })
    assert status == 200
  finally:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
  assert process.returncode == 0, process.stderr.read()[-2000:]
  report = json.loads((tmp_path / "out" / "judge.json").read_text())
  assert report["source"] == "people" and report["win_rate"] == 100.0 and report["pairs"] == 1
