"""flan_jax.generate: a file of prompts answered through the CLI as transformers answers them (batched,
left-padded), and label log-probabilities (what judges and Self-Instruct read) as transformers scores them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from flan_jax import inference
from tests.helpers import ROOT, free_port

PROMPTS = ["Is the cat on the mat?", "Where is the dog?", "The cat sat. Then where is the dog on the mat?"]


def reference_answer(model, reference, prompt, max_new_tokens):
  ids = reference.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
  stop = [reference.convert_tokens_to_ids("<|eot_id|>")]
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                         pad_token_id=stop[0])[0, len(ids):].tolist()
  out = out[:next((i for i, t in enumerate(out) if t in stop), len(out))]
  return reference.decode(out, skip_special_tokens=True).strip()


def test_prompts_file_is_answered_as_transformers_answers(chat_checkpoint, tmp_path):
  """The last row has its own stop string, taken from the middle of transformers' answer, and
  --stop gives every row one that never occurs: that answer ends right before its stop string."""
  checkpoint_dir, model, reference = chat_checkpoint
  expected = [reference_answer(model, reference, p, 8) for p in PROMPTS]
  stop = expected[-1][len(expected[-1]) // 2:][:3]
  expected[-1] = expected[-1][:expected[-1].find(stop)].strip()
  rows = [{"prompt": p, "category": "c"} for p in PROMPTS]
  rows[-1]["stop"] = [stop]
  (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  subprocess.run([sys.executable, "-m", "flan_jax.generate", f"--checkpoint={checkpoint_dir}",
                  f"--prompts={tmp_path / 'prompts.jsonl'}", f"--out={tmp_path / 'answers.jsonl'}",
                  "--max_new_tokens=8", "--batch_size=2", "--stop=never in any answer"], cwd=ROOT, check=True,
                 capture_output=True, timeout=600)
  rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
  assert [(r["prompt"], r["category"], r["model"]) for r in rows] == [(p, "c", checkpoint_dir) for p in PROMPTS]
  assert [r["answer"] for r in rows] == expected


def test_bad_prompts_files_name_the_line(tmp_path):
  (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n{"question": "no prompt"}\n')
  try:
    inference.read_prompts(str(tmp_path / "p.jsonl"))
  except ValueError as e:
    assert "p.jsonl:2:" in str(e)
  else:
    raise AssertionError("a row without a prompt was accepted")
  (tmp_path / "p.jsonl").write_text('{"prompt": "ok", "stop": "###"}\n')
  with pytest.raises(ValueError, match=r"p.jsonl:1: \"stop\" must be a list of strings"):
    inference.read_prompts(str(tmp_path / "p.jsonl"))


def test_continuations_end_before_their_first_stop_string():
  assert inference.cut_at_stop("Answer: 4\n\n### Next\nQ:", ["Q:", "\n\n###"]) == ("Answer: 4", True)
  assert inference.cut_at_stop("Answer: 4", ["Q:", ""]) == ("Answer: 4", False)


def test_choose_gives_label_log_probabilities_as_transformers(chat_checkpoint):
  """The model loads split over the 8 devices (a model larger than one device's memory loads), and
  scores as transformers does in batches rounded up to whole rows per device."""
  checkpoint_dir, model, reference = chat_checkpoint
  loaded = inference.load(checkpoint_dir=checkpoint_dir)
  assert loaded.mesh.shape["fsdp"] == 8
  assert len(loaded.params["embedding"].sharding.device_set) == 8
  prompts = [loaded.tokenizer.generation_prompt([("user", p)], loaded.fmt) for p in PROMPTS]
  labels = ["1", " Yes", "the dog"]
  ours = inference.choose(loaded, prompts, labels, batch_size=2)
  expected = np.zeros_like(ours)
  for i, prompt in enumerate(prompts):
    for j, label in enumerate(labels):
      ids = reference(label, add_special_tokens=False).input_ids
      with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0], -1)
      expected[i, j] = sum(float(log_probs[len(prompt) - 1 + k, t]) for k, t in enumerate(ids))
  np.testing.assert_allclose(ours, expected, atol=2e-4)


@pytest.mark.slow
def test_two_processes_answer_as_one_with_the_model_split_over_both_and_only_the_first_writes(
    chat_checkpoint, tmp_path):
  """generate under a cluster JAX detects (a SLURM job step of two tasks, two CPU devices each): the
  parameters span both processes, the answers are transformers' and process 0 alone writes."""
  checkpoint_dir, model, reference = chat_checkpoint
  (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  slurm = {"SLURM_JOB_ID": "78", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
           "JAX_COORDINATOR_PORT": str(free_port()), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  processes = [subprocess.Popen([sys.executable, "-m", "flan_jax.generate", f"--checkpoint={checkpoint_dir}",
                                 f"--prompts={tmp_path / 'prompts.jsonl'}", f"--out={tmp_path / 'answers.jsonl'}",
                                 "--max_new_tokens=8", "--batch_size=2"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)})
               for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  assert all(p.returncode == 0 for p in processes), [err[-2000:] for _, err in outputs]
  assert "3 answers" in outputs[0][0] and "answers" not in outputs[1][0]  # (gloo prints its ranks)
  rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
  assert [r["answer"] for r in rows] == [reference_answer(model, reference, p, 8) for p in PROMPTS]
