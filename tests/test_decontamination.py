"""Decontamination: planted copies of evaluation instances are found; a clean file is not flagged."""

import random

import pytest

from flan_jax.data import decontamination, pipeline
from tests.helpers import dropped, lightly_edited, load_config, sentence, write_jsonl

def test_planted_copies_and_edited_copies_are_found_and_a_clean_file_is_not():
  rng = random.Random(0)
  evaluation = [sentence(rng, rng.randint(20, 60)) for _ in range(200)]
  index = decontamination.Index(ngram=8, threshold=0.5)
  for i, text in enumerate(evaluation):
    index.add(f"eval/{i}", text)
  clean = [("clean", i, sentence(rng, rng.randint(20, 80))) for i in range(2000)]
  planted = [("dirty", i, sentence(rng, 30)) for i in range(2000)]
  copies = {}
  for k, instance in enumerate(range(0, 200, 10)):  # 20 planted: exact, or lightly edited, inside other text
    text = evaluation[instance] if k % 2 else lightly_edited(rng, evaluation[instance])
    position = 97 * k
    planted[position] = ("dirty", position, f"{sentence(rng, 10)} {text} {sentence(rng, 10)}")
    copies[position] = f"eval/{instance}"
  assert decontamination.scan(index, clean) == {}
  flagged = decontamination.scan(index, planted)["dirty"]
  assert {f["index"]: [m["name"] for m in f["instances"]] for f in flagged} == {p: [n] for p, n in copies.items()}
  assert all(0.5 < m["coverage"] <= 1 for f in flagged for m in f["instances"])


def test_half_of_an_instance_is_the_line():
  index = decontamination.Index(ngram=4, threshold=0.5)
  index.add("q", " ".join(f"a{i}" for i in range(20)))
  half = " ".join(f"a{i}" for i in range(10))
  more = " ".join(f"a{i}" for i in range(11))
  assert index.matches(half) == [] and index.matches(more) == [("q", 0.55)]
  assert index.matches("A0 a1, a2 A3 a4!") == []  # 5 of 20 words
  short = decontamination.Index(ngram=8)
  short.add("tiny", "only five words in here")
  assert short.matches("only five words in here") == []  # shorter than one n-gram: never matched


@pytest.mark.parametrize("ngram, threshold, message", [
    (3, 0.5, r"data.decontamination.ngram=3: .* use 4 or more"),
    (8, 0.0, r"data.decontamination.threshold=0.0: .* in \(0, 1\]"),
    (8, 1.5, r"data.decontamination.threshold=1.5"),
])
def test_settings_outside_their_range_are_errors_naming_the_key(ngram, threshold, message):
  with pytest.raises(ValueError, match=message):
    decontamination.Index(ngram=ngram, threshold=threshold)


def test_a_run_drops_training_rows_copied_from_its_held_out_and_evaluation_files(tmp_path):
  rng = random.Random(1)
  held_out = [{"instruction": "Answer the question.", "input": sentence(rng, 30), "output": "yes"} for _ in range(20)]
  exam = [{"instruction": "Pick one.", "input": sentence(rng, 40), "output": "b"} for _ in range(10)]
  train = [{"instruction": "Say it back.", "input": sentence(rng, 30), "output": "ok"} for _ in range(200)]
  train[5]["input"] = held_out[3]["input"]  # an exact copy
  train[50]["input"] = lightly_edited(rng, held_out[7]["input"])  # an edited one
  train[150]["input"] = f"{sentence(rng, 5)} {exam[2]['input']}"  # an evaluation file's instance
  config = load_config("tiny")
  config.data.mixture = ()
  config.data.held_out_clusters = ("held",)
  config.data.local_tasks = (
      {"name": "dc_train", "path": write_jsonl(tmp_path / "train.jsonl", train), "format": "alpaca", "cluster": "mine"},
      {"name": "dc_held", "path": write_jsonl(tmp_path / "held.jsonl", held_out), "format": "alpaca", "cluster": "held"})
  config.data.decontamination.evaluation_files = (
      {"name": "dc_exam", "path": write_jsonl(tmp_path / "exam.jsonl", exam), "format": "alpaca", "cluster": "exam"},)
  mix = pipeline.resolve_mixture(config.data)
  assert dropped(mix) == {"dc_train": frozenset({5, 50, 150})} and mix.sizes["dc_train"] == 197
  sets = mix.contamination["evaluation_sets"]
  assert sets["held_out:dc_held"] == {"instances": 20, "found_in_training": 2}
  assert sets["file:dc_exam:train"] == {"instances": 10, "found_in_training": 1}
  examples = mix.contamination["training_tasks"]["dc_train"]["examples"]
  assert [(f["index"], [m["name"] for m in f["instances"]]) for f in examples] == [
      (5, ["held_out:dc_held/3"]), (50, ["held_out:dc_held/7"]), (150, ["file:dc_exam:train/2"])]
  stream = pipeline.mixed_records(mix, seed=0)
  assert {stream[i][1] for i in range(2000) if stream[i][0] == "dc_train"}.isdisjoint({5, 50, 150})

  config.data.decontamination.mode = "report"  # found, reported, trained on
  mix = pipeline.resolve_mixture(config.data)
  assert dropped(mix) == {} and mix.sizes["dc_train"] == 200
  assert mix.contamination["training_tasks"]["dc_train"]["flagged"] == 3
  config.data.decontamination.mode = "off"
  assert pipeline.resolve_mixture(config.data).contamination is None

  config.data.decontamination.mode = "drop"
  config.data.decontamination.max_drop_fraction = 0.01
  with pytest.raises(ValueError, match=r"would drop more than max_drop_fraction=0.01 of training task\(s\) "
                                       r"\{'dc_train': '3 of 200'\}"):
    pipeline.resolve_mixture(config.data)
  config.data.decontamination.mode = "remove"
  with pytest.raises(ValueError, match=r"data.decontamination.mode='remove': choose from off, report, drop"):
    pipeline.resolve_mixture(config.data)


def test_an_evaluation_file_that_cannot_be_read_names_the_key(tmp_path):
  config = load_config("tiny")
  config.data.decontamination.evaluation_files = (
      {"name": "dc_missing", "path": str(tmp_path / "nope.jsonl"), "format": "alpaca", "cluster": "exam"},)
  with pytest.raises(FileNotFoundError, match=r"data.decontamination.evaluation_files: .*nope.jsonl"):
    pipeline.resolve_mixture(config.data)


def test_an_instruction_a_task_shares_is_not_a_match_but_a_copied_input_is(tmp_path):
  """200 rows of one 10-word instruction over different inputs, checked against an evaluation file
  of the same instruction: nothing flagged but the row whose input copies an instance."""
  rng = random.Random(2)
  instruction = "Read the following short passage and then write one summary sentence."
  rows = lambda n, words: [{"instruction": instruction, "input": sentence(rng, words), "output": "ok"}
                           for _ in range(n)]
  train, exam = rows(200, 9), rows(30, 9)  # the instruction alone would cover 10 of 19 words
  train[77]["input"] = exam[4]["input"]
  solo = {"instruction": f"{sentence(rng, 4)} {exam[9]['input']}", "output": "ok"}  # no input: compared whole
  config = load_config("tiny")
  config.data.mixture = ()
  config.data.held_out_clusters = ()
  config.data.deduplication.mode = "near"
  config.data.local_tasks = (
      {"name": "shared_train", "path": write_jsonl(tmp_path / "train.jsonl", train + [solo]), "format": "alpaca",
       "cluster": "mine"},)
  config.data.decontamination.evaluation_files = (
      {"name": "shared_exam", "path": write_jsonl(tmp_path / "exam.jsonl", exam), "format": "alpaca",
       "cluster": "exam"},)
  mix = pipeline.resolve_mixture(config.data)
  flagged = mix.contamination["training_tasks"]["shared_train"]["examples"]
  assert [(f["index"], [m["name"] for m in f["instances"]]) for f in flagged] == [
      (77, ["file:shared_exam:train/4"]), (200, ["file:shared_exam:train/9"])]
  assert dropped(mix) == {"shared_train": frozenset({77, 200})}  # and no row is a near copy of another
