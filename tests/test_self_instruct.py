"""Self-Instruct: seed-file checks, each filter on hand-made candidates, and whole runs with a scripted
model (resume appends without duplicates; a seed gives the same rows however the run is split)."""

import json
import re

import jax
import numpy as np
import pytest

from flan_jax import inference, self_instruct
from flan_jax.self_instruct import parse_instance, parse_instructions, rejection

SEEDS = [{"instruction": f"Write a {kind} about {topic}.", "instances": [{"input": "", "output": f"A {kind}."}],
          "is_classification": False}
         for kind in ("poem", "story", "letter") for topic in ("the sea", "a city", "winter")]
SEEDS += [{"instruction": "Classify the sentiment of the review as positive or negative.",
           "instances": [{"input": "Great food.", "output": "positive"}], "is_classification": True}]


def write_seeds(path, seeds=SEEDS):
  path.write_text("".join(json.dumps(s) + "\n" for s in seeds))
  return str(path)


@pytest.mark.parametrize("line, message", [
    ("not json", ":1: not JSON"),
    ('{"instances": [{"input": "", "output": "x"}], "is_classification": false}', ":1: missing or empty 'instruction'"),
    ('{"instruction": "Do it.", "instances": [], "is_classification": false}', ":1: 'instances' must be a non-empty"),
    ('{"instruction": "Do it.", "instances": [{"input": ""}], "is_classification": false}', "instances[0] must have"),
    ('{"instruction": "Do it.", "instances": [{"input": "", "output": "x"}]}', ":1: 'is_classification' must be"),
])
def test_bad_seed_files_name_file_line_and_field(tmp_path, line, message):
  path = tmp_path / "seeds.jsonl"
  path.write_text(line + "\n")
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    self_instruct.read_seed_tasks(str(path))
  assert str(path) in str(error.value)


def test_seed_file_is_read(tmp_path):
  seeds = self_instruct.read_seed_tasks(write_seeds(tmp_path / "seeds.jsonl"))
  assert len(seeds) == 10 and seeds[-1].is_classification
  assert seeds[-1].instances == (("Great food.", "positive"),) and seeds[0].instances == (("", "A poem."),)


def test_instruction_filters_on_hand_made_candidates():
  assert rejection("Write a poem.") == "too_short"  # 3 words
  assert rejection("Write " + "very " * 149 + "long.") == "too_long"  # 151 words
  assert rejection("Write " + "very " * 148 + "long.") == ""  # 150 words
  assert rejection("Draw a cat sitting on a mat.") == "blocked_word"
  assert rejection("Describe the images in this photo album.") == "blocked_word"  # plurals count
  assert rejection("Tell me how to go to the train station.") == "blocked_word"  # a phrase
  assert rejection("Explain the mapping between two sets.") == ""  # words, not substrings
  assert rejection("- Write a short poem about rain.") == "starts_with_punctuation"
  assert rejection("Écrivez un poème sur la mer.") == "starts_non_ascii"
  assert rejection("Summarize the following news article in one sentence.") == ""
  pool = ["Write a short poem about the sea."]
  assert self_instruct.most_similar("Write a short poem about the ocean.", pool) > self_instruct.MAX_ROUGE_L
  assert self_instruct.most_similar("List three uses of a paper clip.", pool) <= self_instruct.MAX_ROUGE_L
  assert self_instruct.most_similar("Anything at all.", []) == 0.0


def test_instructions_are_parsed_from_the_continued_list():
  prompt = self_instruct.instructions_prompt(["First task here.", "Second task here."])
  assert prompt.endswith("Task 2: Second task here.\nTask 3:")
  text = " Name three   colours.\nTask 4: Sort the numbers.\n\nSomething else entirely."
  assert parse_instructions(text, cut_short=False) == (["Name three colours.", "Sort the numbers."], 0)
  assert parse_instructions(" Name three colours.\nTask 4: Sort the num", cut_short=True) == (["Name three colours."], 1)
  many = "".join(f" Task number {i}.\nTask {i + 4}:" for i in range(12))
  assert len(parse_instructions(many, cut_short=True)[0]) == 8  # at most 8 new ones; the cut one is beyond


def test_instances_are_parsed_input_first_or_label_first():
  assert parse_instance(" The sky.\nOutput: Blue.\n\nTask: next", False, cut_short=False) == (("The sky.", "Blue."), "")
  assert parse_instance("\nOutput: Blue.\nTask: next", False, cut_short=True) == (("", "Blue."), "")
  assert parse_instance(" positive\nInput: Loved it.\n\nmore", True, cut_short=True) == (("Loved it.", "positive"), "")
  assert parse_instance(" The sky is", False, cut_short=True) == (None, "instance_cut_short")
  assert parse_instance(" The sky.\nOutput: Blue and", False, cut_short=True) == (None, "instance_cut_short")
  assert parse_instance(" The sky.\nAnswer: Blue.", False, cut_short=False) == (None, "instance_unparsed")
  assert parse_instance(" The sky.\nOutput:\n\nTask: x", False, cut_short=False) == (None, "instance_empty_output")
  assert parse_instance(" Blue.\nOutput: Blue.\n\n", False, cut_short=False) == (None, "instance_output_is_input")
  prompt = self_instruct.instance_prompt([self_instruct.SeedTask("Add.", (("1 2", "3"),), False)], "Multiply.", False)
  assert prompt.endswith("Task: Add.\nInput: 1 2\nOutput: 3\n\nTask: Multiply.\nInput:")


class TextTokenizer:
  """Prompts stay text, so the scripted model reads them."""

  def encode_text(self, text):
    return text


ANIMALS = ["cat", "dog", "owl", "fox", "eel", "yak", "bee", "ant", "elk", "emu", "gnu", "hen"]
WORDS = ("forest harbour desert kitchen library station garden market valley island bridge tower river candle "
         "mirror ladder violin pepper blanket engine").split()


def words(n, count=4):
  return " ".join(WORDS[(n * 7 + 3 * k * k + k) % len(WORDS)] for k in range(count))


def scripted_model(monkeypatch, calls):
  """A stand-in for the model: continuations drawn from the sampling key, so a round's output depends
  on (seed, round) alone; "Classify" instructions are classification tasks."""

  def continue_texts(loaded, prompts, *, rng, **kw):
    calls.append(len(prompts))
    draws = np.random.default_rng(np.asarray(jax.random.key_data(rng)).tolist()).integers(0, 1000, (len(prompts), 3))
    texts, cut = [], []
    for prompt, (x, y, z) in zip(prompts, draws):
      if prompt.endswith("Class label:"):
        texts.append(f" {'yes' if x % 2 else 'no'}\nInput: Is the {ANIMALS[y % 12]} happy?\n\nTask: more")
      elif prompt.endswith("Input:"):
        texts.append(["\nOutput: Done.", " Same.\nOutput: Same.\n\n", f" Item {x}.\nOutput: Answer {y}.\n\nTask:"][z % 3])
      else:  # a list of instructions to continue
        texts.append(f" Describe {words(x)} together.\n"
                     f"Task 10: Classify whether a {ANIMALS[y % 12]} or {words(y, 3)} can fly.\nTask 11: Draw a picture of a quiet sea.\n"
                     f"Task 12: Sing.\nTask 13: Tell a long tale of {words(z + 5)}\nTask 14: Cut")
        cut.append(True)
        continue
      cut.append(False)
    return texts, cut

  def choose(loaded, prompts, labels, **kw):
    return np.asarray([[0.0, -1.0] if p.rsplit("\n\n", 1)[-1].startswith("Task: Classify") else [-1.0, 0.0] for p in prompts])

  monkeypatch.setattr(inference, "continue_texts", continue_texts)
  monkeypatch.setattr(inference, "choose", choose)
  return inference.LoadedModel(None, None, TextTokenizer(), "flan", 0, "scripted", None)


def test_run_keeps_filtered_instructions_resumes_and_is_deterministic(tmp_path, monkeypatch):
  calls = []
  loaded = scripted_model(monkeypatch, calls)
  seeds = write_seeds(tmp_path / "seeds.jsonl")
  run = lambda out, n, **kw: self_instruct.self_instruct(loaded, seeds, str(out), n, batch_size=4, progress=False, **kw)

  first = run(tmp_path / "split.jsonl", 6)
  assert first["instructions"] >= 6
  rows = [json.loads(line) for line in (tmp_path / "split.jsonl").read_text().splitlines()]
  assert len(rows) == first["instances"] and len({r["instruction"] for r in rows}) == first["instructions"]
  rejected = first["rejected"]
  assert rejected["blocked_word"] > 0 and rejected["too_short"] > 0 and rejected["cut_short"] > 0
  assert rejected["instance_output_is_input"] + rejected["no_instance"] > 0
  for row in rows:
    assert set(row) == {"instruction", "input", "output", "category", "is_classification", "round"}
    assert row["category"] == ("classification" if row["instruction"].startswith("Classify") else "generation")
    if row["is_classification"]:
      assert row["output"] in ("yes", "no") and row["input"].startswith("Is the")
  kept = [r["instruction"] for r in rows]
  for i, instruction in enumerate(dict.fromkeys(kept)):
    others = [s["instruction"] for s in SEEDS] + list(dict.fromkeys(kept))[:i]
    assert self_instruct.most_similar(instruction, others) <= self_instruct.MAX_ROUGE_L

  first_text = (tmp_path / "split.jsonl").read_text()
  second = run(tmp_path / "split.jsonl", first["instructions"] + 5)
  assert second["rounds"] > first["rounds"]
  split_rows = (tmp_path / "split.jsonl").read_text()
  assert split_rows.startswith(first_text) and len(split_rows) > len(first_text)  # appended
  whole = run(tmp_path / "whole.jsonl", first["instructions"] + 5)
  assert (tmp_path / "whole.jsonl").read_text() == split_rows  # one run or two: the same rows
  assert whole["rejected"] == second["rejected"] and whole["rounds"] == second["rounds"]
  assert len(set(split_rows.splitlines())) == len(split_rows.splitlines())

  # Rows of a round whose summary was never written (a crash) are dropped and the round is redone.
  with open(tmp_path / "split.jsonl", "a") as f:
    f.write(json.dumps({**rows[0], "round": second["rounds"]}) + "\n")
  run(tmp_path / "split.jsonl", whole["instructions"] + 3)
  run(tmp_path / "whole.jsonl", whole["instructions"] + 3)
  assert (tmp_path / "split.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()

  calls.clear()
  assert run(tmp_path / "whole.jsonl", 1)["rounds"] == self_instruct.json.loads(
      (tmp_path / "whole.summary.json").read_text())["rounds"] and not calls  # target reached: nothing to do
  assert run(tmp_path / "other_seed.jsonl", 3, seed=1)["instructions"] >= 3
  assert (tmp_path / "other_seed.jsonl").read_text().splitlines()[0] != split_rows.splitlines()[0]


def test_rerun_with_other_settings_or_a_foreign_file_is_an_error(tmp_path, monkeypatch):
  loaded = scripted_model(monkeypatch, [])
  seeds = write_seeds(tmp_path / "seeds.jsonl")
  self_instruct.self_instruct(loaded, seeds, str(tmp_path / "out.jsonl"), 2, batch_size=4, progress=False)
  with pytest.raises(ValueError, match="generated with temperature=0.7, not 1.0"):
    self_instruct.self_instruct(loaded, seeds, str(tmp_path / "out.jsonl"), 4, batch_size=4, temperature=1.0,
                                progress=False)
  (tmp_path / "mine.jsonl").write_text('{"instruction": "x"}\n')
  with pytest.raises(FileExistsError, match="not a self_instruct output"):
    self_instruct.self_instruct(loaded, seeds, str(tmp_path / "mine.jsonl"), 2, batch_size=4, progress=False)
  with pytest.raises(ValueError, match="3 seed tasks; a prompt needs 8"):
    self_instruct.self_instruct(loaded, write_seeds(tmp_path / "few.jsonl", SEEDS[:3]), str(tmp_path / "o.jsonl"), 2,
                                progress=False)


def test_output_is_read_by_local_tasks(tmp_path, monkeypatch):
  from flan_jax.data.sources import local_files
  loaded = scripted_model(monkeypatch, [])
  self_instruct.self_instruct(loaded, write_seeds(tmp_path / "seeds.jsonl"), str(tmp_path / "out.jsonl"), 4,
                              batch_size=4, progress=False)
  rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  registered, _ = local_files.register(dict(name="si_out", path=str(tmp_path / "out.jsonl"), format="alpaca",
                                            cluster_field="category"), False)
  assert sorted(t.name for t in registered) == sorted(f"si_out_{c}" for c in {r["category"] for r in rows})
  assert sum(len(t.source("train")) for t in registered) == len(rows)
