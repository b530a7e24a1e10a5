"""Every registered TFDS task, end to end (source -> template -> tokens) under mock data."""

import pytest

from flan_jax.data import render, tasks, templates
from flan_jax.data.sources import flan2021

tfds = pytest.importorskip("tensorflow_datasets")

NUM_EXAMPLES = 12


def test_every_flan2021_cluster_has_tfds_tasks():
  clusters = {tasks.get(n).cluster for n in flan2021.SPECS}
  assert clusters == set(tasks.CLUSTERS)
  assert all(len(tasks.get(n).templates) >= 3 for n in flan2021.SPECS)


def _aligned_choices(record):
  choices = record["choices"]
  n = min(len(choices["text"]), len(choices["label"]))
  labels = choices["label"][:n]
  return dict(record, choices={"text": choices["text"][:n], "label": labels}, answerKey=labels[0])


# Mock records break invariants real data keeps: plain int features are drawn
# from 0..255 (not a label's small domain), and the parallel lists of a
# sequence-of-dicts feature get different lengths. These restore them.
MOCK_FIXES = {
    "sentiment140": lambda r: dict(r, polarity=(0, 4)[int(r["polarity"]) % 2]),
    "arc_easy": _aligned_choices,
    "arc_challenge": _aligned_choices,
}


@pytest.mark.slow
def test_every_tfds_task_renders_under_mock_data(tiny_config, tokenizer):
  data = tiny_config.data
  rendered = {}
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    for name in flan2021.SPECS:
      task = tasks.get(name)
      good = 0
      for split in task.splits:
        records = task.source(split)
        assert len(records) == NUM_EXAMPLES, (name, split)
        for record in records:
          try:
            fields = task.example_fields(MOCK_FIXES.get(name, dict)(record))
          except tasks.BadRecordError as e:
            # Random labels may fall outside a task's options; a missing or
            # misnamed field ("cannot read record") is a bug in the task.
            assert str(e).startswith(f"task {name}: ") and "cannot read record" not in str(e), str(e)
            continue
          for template in task.templates:
            turns = render.conversation(task, fields, template, data.template)
            tokens, weights = tokenizer.encode_segments(templates.to_segments(turns, "flan"))
            assert weights.sum() > 0 and (weights[:2] == 0).all()
          good += 1
      rendered[name] = good
  assert all(n > 0 for n in rendered.values()), {k: v for k, v in rendered.items() if not v}


def test_unprepared_dataset_names_the_fix():
  with pytest.raises(FileNotFoundError, match="tfds build glue/rte --file_format=array_record"):
    tasks.get("rte").source("train")


def test_snli_pairs_without_a_gold_label_are_skipped_and_counted_in_training_and_evaluation(tiny_config):
  snli = tasks.get("snli")
  unlabeled = {"premise": b"A man sleeps.", "hypothesis": b"A person rests.", "label": -1}
  labeled = dict(unlabeled, label=0)
  with pytest.raises(tasks.UnlabeledRecordError, match="task snli: label label=-1"):
    snli.example_fields(unlabeled)
  with pytest.raises(tasks.BadRecordError, match="task snli: label label=7 is outside 0..2") as error:
    snli.example_fields(dict(unlabeled, label=7))
  assert not isinstance(error.value, tasks.UnlabeledRecordError)
  assert not tiny_config.data.skip_bad_records  # unlabeled records are skipped all the same
  stats = render.Stats()
  renderer = render.Renderer(tiny_config.data, None, [snli], stats)
  assert renderer.fields(snli, unlabeled) is None and renderer.fields(snli, labeled)["answer"] == "yes"
  assert stats.skipped == {"snli": 1}
  with pytest.raises(tasks.BadRecordError):
    renderer.fields(snli, dict(unlabeled, label=7))  # a bad record is still an error without skip_bad_records
