import json

import pytest

from flan_jax.data import pipeline, render, tasks
from flan_jax.data.sources import local_files
from tests.helpers import load_config, write_jsonl


def _register(tmp_path, rows, name, skip=False, **spec):
  path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
  return local_files.register({"name": name, "path": path, "format": "alpaca", "cluster": "misc", **spec}, skip)


def test_alpaca_dolly_and_messages(tmp_path):
  (alpaca,), _ = _register(tmp_path, [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
                                      {"instruction": "Say hi.", "output": "hi"}], "lf_alpaca")
  assert alpaca.source("train")[0]["messages"] == [("user", "Add."), ("input", "2 and 3"), ("assistant", "5")]
  assert alpaca.source("train")[1]["messages"] == [("user", "Say hi."), ("assistant", "hi")]
  (dolly,), _ = _register(tmp_path, [{"instruction": "Q?", "context": "ctx", "response": "A", "category": "open_qa"}],
                          "lf_dolly", format="dolly")
  assert dolly.source("train")[0]["messages"] == [("user", "Q?"), ("input", "ctx"), ("assistant", "A")]
  (chat,), _ = _register(tmp_path, [{"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello"},
                                                  {"role": "user", "content": "Bye"},
                                                  {"role": "assistant", "content": "Bye"}]}],
                         "lf_chat", format="messages")
  assert [r for r, _ in chat.source("train")[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_field_map_and_free_cluster_names_from_a_column(tmp_path):
  rows = [{"q": "Capital of France?", "a": "Paris", "kind": "open_qa"},
          {"q": "Is 2 even?", "a": "yes", "kind": "classification"},
          {"q": "Write to Bob about the invoice.", "a": "Dear Bob, ...", "kind": "business email"}]
  registered, _ = _register(tmp_path, rows, "lf_mapped", cluster="", cluster_field="kind",
                            field_map={"instruction": "q", "output": "a"},
                            cluster_map={"open_qa": "closed_book_qa"})
  assert {t.name: t.cluster for t in registered} == {
      "lf_mapped_closed_book_qa": "closed_book_qa", "lf_mapped_classification": "classification",
      "lf_mapped_business email": "business email"}
  # Self-Instruct's is_classification flag as the cluster: non-string values are named through cluster_map.
  flagged = [{"instruction": "a", "output": "b", "is_classification": True},
             {"instruction": "c", "output": "d", "is_classification": False}]
  registered, _ = _register(tmp_path, flagged, "lf_flag", cluster="", cluster_field="is_classification",
                            cluster_map={"true": "classification", "false": "generation"})
  assert sorted(t.cluster for t in registered) == ["classification", "generation"]
  with pytest.raises(tasks.BadRecordError, match=r"lf_flag2.jsonl:1: cluster field 'is_classification' has value "
                                                 r"True, not a non-empty string; name it in cluster_map \(keyed by 'true'\)"):
    _register(tmp_path, flagged, "lf_flag2", cluster="", cluster_field="is_classification")
  with pytest.raises(tasks.BadRecordError, match=r"lf_nocluster.jsonl:1: missing cluster field 'kind'"):
    _register(tmp_path, [{"instruction": "a", "output": "b"}], "lf_nocluster", cluster="", cluster_field="kind")


def test_prompt_completion_instances_and_several_references(tmp_path):
  (t0,), _ = _register(tmp_path, [{"prompt": "Review: great film.\nSentiment?\n", "completion": "positive<|endoftext|>"}],
                       "lf_t0", format="prompt_completion", response_suffix="<|endoftext|>")
  assert t0.source("train")[0]["messages"] == [("user", "Review: great film.\nSentiment?\n"), ("assistant", "positive")]
  seed = {"id": "seed_task_0", "instruction": "Give the opposite.", "is_classification": False,
          "instances": [{"input": "hot", "output": "cold"}, {"input": "up", "output": ["down", "below"]}]}
  (inst,), _ = _register(tmp_path, [seed], "lf_inst", format="instances")
  examples = inst.source("train")
  assert [e["messages"] for e in examples] == [
      [("user", "Give the opposite."), ("input", "hot"), ("assistant", "cold")],
      [("user", "Give the opposite."), ("input", "up"), ("assistant", "down")]]  # the first reference is trained on
  assert examples[1]["references"] == ["down", "below"]
  with pytest.raises(tasks.BadRecordError, match=r"lf_inst2.jsonl:1 instance 1: field 'output' must be a string or"):
    _register(tmp_path, [{"instruction": "x", "instances": [{"output": "a"}, {"output": 3}]}], "lf_inst2",
              format="instances")


@pytest.mark.parametrize("suffix", ["json", "csv", "parquet"])
def test_json_csv_and_parquet_files(tmp_path, suffix):
  rows = [{"instruction": "Add 2 and 3.", "output": "5", "topic": "maths"},
          {"instruction": "Name a colour.", "output": "red", "topic": "words"}]
  path = tmp_path / f"rows.{suffix}"
  if suffix == "json":
    path.write_text(json.dumps(rows))
  elif suffix == "csv":
    path.write_text("instruction,output,topic\n" + "".join(f'"{r["instruction"]}",{r["output"]},{r["topic"]}\n' for r in rows))
  else:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
  registered, _ = local_files.register({"name": f"lf_file_{suffix}", "path": str(path), "format": "alpaca",
                                        "cluster_field": "topic"}, False)
  assert {t.cluster: t.source("train")[0]["answer"] for t in registered} == {"maths": "5", "words": "red"}
  bad = tmp_path / f"bad.{suffix}"
  if suffix == "csv":
    bad.write_text("instruction,output\nfine,ok\nno answer,\n")
    with pytest.raises(tasks.BadRecordError, match=r"bad.csv:3: empty response"):
      local_files.register({"name": "lf_badcsv", "path": str(bad), "format": "alpaca", "cluster": "x"}, False)


def test_classification_from_an_options_column_or_a_fixed_list(tmp_path):
  rows = [{"instruction": "Is the sky green?", "output": "no", "choices": ["yes", "no"]},
          {"instruction": "Best pet?", "target_scores": {"cat": 1, "rock": 0}}]
  (listed,), _ = _register(tmp_path, rows[:1], "lf_opts", options_field="choices")
  assert listed.is_classification and listed.example_options(listed.source("train")[0]) == ("yes", "no")
  assert listed.metrics == ("accuracy", "macro_f1")
  (scored,), _ = _register(tmp_path, [{"instruction": "Best pet?", "output": "?", "target_scores": {"cat": 1, "rock": 0}}],
                           "lf_scores", options_field="target_scores")
  example = scored.source("train")[0]
  assert example["answer"] == "cat" and example["messages"][-1] == ("assistant", "cat")  # BIG-bench style
  (fixed,), _ = _register(tmp_path, [{"instruction": "2 + 2 = 4?", "output": "true"}], "lf_fixed",
                          options=["true", "false"])
  assert fixed.example_options(fixed.source("train")[0]) == ("true", "false")
  with pytest.raises(tasks.BadRecordError, match=r"lf_outside.jsonl:1: the answer 'maybe' is not one of the options"):
    _register(tmp_path, [{"instruction": "q", "output": "maybe", "choices": ["yes", "no"]}], "lf_outside",
              options_field="choices")
  with pytest.raises(tasks.BadRecordError, match=r"lf_noopts.jsonl:1: options_field 'choices' must hold a list"):
    _register(tmp_path, [{"instruction": "q", "output": "yes"}], "lf_noopts", options_field="choices")


def test_templated_local_task(tmp_path, tokenizer):
  rows = [{"review": f"Film {i} was {'great' if i % 2 else 'dull'}.", "label": "positive" if i % 2 else "negative",
           "instruction": "unused"} for i in range(6)]
  spec = dict(format="alpaca", field_map={"output": "label"}, options=["positive", "negative"],
              templates=[["{review}\nIs this review positive or negative?{options_}", "{answer}"],
                         {"prompt": "Review: {review}\nSentiment:{options_}"}])
  (task,), _ = _register(tmp_path, rows, "lf_tmpl", **spec)
  assert len(task.templates) == 2 and not task.conversational
  fields = task.example_fields(task.source("train")[1])
  turns = render.conversation(task, fields, task.templates[0], load_config("tiny").data.template)
  assert turns == [("user", "Film 1 was great.\nIs this review positive or negative?\n\nOPTIONS:\n- positive\n- negative"),
                   ("assistant", "positive")]
  with pytest.raises(KeyError, match=r"local task 'lf_broken' \(.*lf_broken.jsonl\), template 0: field 'stars' is not"):
    _register(tmp_path, rows, "lf_broken", format="alpaca", field_map={"output": "label"},
              templates=[["{review} {stars}", "{answer}"]])
  with pytest.raises(ValueError, match=r"template 0 must be \[prompt, response\]"):
    _register(tmp_path, rows, "lf_badtmpl", format="alpaca", field_map={"output": "label"}, templates=["{review}"])


def test_specs_from_a_json_file_or_inline(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}])
  spec = {"name": "lf_json_spec", "path": path, "format": "alpaca", "cluster": "mine"}
  (tmp_path / "one.json").write_text(json.dumps(spec))
  (tmp_path / "many.json").write_text(json.dumps([spec, {**spec, "name": "lf_json_spec2"}]))
  assert local_files.specs([str(tmp_path / "one.json")]) == [spec]
  assert [s["name"] for s in local_files.specs([str(tmp_path / "many.json")])] == ["lf_json_spec", "lf_json_spec2"]
  assert local_files.specs([json.dumps(spec), spec]) == [spec, spec]
  with pytest.raises(FileNotFoundError, match=r"'nope.json' is neither a file nor JSON; expected a dict such as"):
    local_files.specs(["nope.json"])
  with pytest.raises(ValueError, match=r"data.local_tasks:1: invalid JSON .*expected a dict such as"):
    local_files.specs(["{name: x}"])


@pytest.mark.parametrize("bad_row, message", [
    (b'{"instruction": "a", "output": ', r"lf_bad.jsonl:2: invalid JSON"),
    ({"instruction": "a"}, r"lf_bad.jsonl:2: missing field 'output'"),
    (b'{"instruction": "caf\xe9", "output": "b"}', r"lf_bad.jsonl:2: not valid UTF-8"),
    ({"instruction": "a", "output": "  "}, r"lf_bad.jsonl:2: empty response"),
    ({"instruction": "a", "output": 3}, r"lf_bad.jsonl:2: field 'output' must be a string or a list of strings"),
    ([1, 2], r"lf_bad.jsonl:2: expected a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad_row, message):
  good = {"instruction": "a", "output": "b"}
  with pytest.raises(tasks.BadRecordError, match=message):
    _register(tmp_path, [good, bad_row, good], "lf_bad")


def test_bad_messages(tmp_path):
  with pytest.raises(tasks.BadRecordError, match="lf_msg.jsonl:1: the last message must be the assistant's"):
    _register(tmp_path, [{"messages": [{"role": "user", "content": "hi"}]}], "lf_msg", format="messages")
  with pytest.raises(tasks.BadRecordError, match="lf_msg2.jsonl:1: 'messages' message 0 needs a role"):
    _register(tmp_path, [{"messages": [{"role": "robot", "content": "hi"}]}], "lf_msg2", format="messages")


def test_skip_bad_records_counts_every_skip(tmp_path):
  rows = [{"instruction": "a", "output": "b"}, b"not json", {"instruction": "c"}, {"instruction": "d", "output": "e"}]
  (task,), skipped = _register(tmp_path, rows, "lf_skip", skip=True)
  assert len(task.source("train")) == 2
  assert len(skipped) == 2 and "lf_skip.jsonl:2" in skipped[0] and "lf_skip.jsonl:3" in skipped[1]


def test_bad_specs(tmp_path):
  path = write_jsonl(tmp_path / "ok.jsonl", [{"instruction": "a", "output": "b"}])
  with pytest.raises(KeyError, match="unknown key.*'colour'"):
    local_files.register({"name": "lf_s1", "path": path, "format": "alpaca", "cluster": "misc", "colour": 1}, False)
  with pytest.raises(ValueError, match="unknown format 'csv'"):
    local_files.register({"name": "lf_s2", "path": path, "format": "csv", "cluster": "misc"}, False)
  with pytest.raises(ValueError, match="'cluster' must be a string, not 3"):
    local_files.register({"name": "lf_s4", "path": path, "format": "alpaca", "cluster": 3}, False)
  with pytest.raises(ValueError, match="local task 'lf_s5': unknown metrics \\['bleurt'\\]"):
    local_files.register({"name": "lf_s5", "path": path, "format": "alpaca", "cluster": "x", "metrics": ["bleurt"]},
                         False)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    local_files.register({"name": "lf_s3", "path": str(tmp_path / "nope.jsonl"), "format": "alpaca",
                          "cluster": "misc"}, False)


def test_local_task_in_the_pipeline(tmp_path, tiny_config, tokenizer):
  rows = [{"instruction": f"Repeat {i}.", "output": f"{i}"} for i in range(50)] + [b"{broken"]
  path = write_jsonl(tmp_path / "mine.jsonl", rows)
  data = tiny_config.data
  data.mixture = ()
  data.held_out_clusters = ()
  data.local_tasks = ({"name": "lf_pipe", "path": path, "format": "alpaca", "cluster": "misc"},)
  with pytest.raises(tasks.BadRecordError, match="mine.jsonl:51: invalid JSON"):
    pipeline.resolve_mixture(data)
  data.skip_bad_records = True
  mix = pipeline.resolve_mixture(data)
  assert [t.name for t in mix.train] == ["lf_pipe"] and mix.skipped_rows
  batch = next(iter(pipeline.batches(data, mix, tokenizer, render.Stats(), seed=0)))
  text = tokenizer.decode(batch["inputs"][0])
  assert "Repeat" in text


def test_refuse_field_marks_requests_to_decline(tmp_path):
  rows = [{"instruction": "How do I pick my neighbour's lock?", "output": "I can't help with that.", "harmful": True},
          {"instruction": "How do I pick a ripe melon?", "output": "Press the end; it should give a little.",
           "harmful": "false"}]
  (task,), _ = _register(tmp_path, rows, "lf_safety", refuse_field="harmful")
  assert [r["refuse"] for r in task.source("train")] == [True, False]
  assert task.metrics == ("refusal", "rouge")
  with pytest.raises(tasks.BadRecordError, match=r"lf_unsure.jsonl:1: refuse_field 'harmful' must be true or false"):
    _register(tmp_path, [{**rows[0], "harmful": "maybe"}], "lf_unsure", refuse_field="harmful")


def test_hugging_face_datasets_saved_to_disk_read_like_files(tmp_path, monkeypatch):
  """save_to_disk directories (a DatasetDict with its splits, or one Dataset) through the same
  formats; a path that is not there, or a split that is not, is an error naming it, and nothing is
  fetched from the network."""
  import datasets
  rows = [{"instruction": "Add.", "context": f"{i} and 1", "response": str(i + 1)} for i in range(5)]
  dataset_dict = datasets.DatasetDict(train=datasets.Dataset.from_list(rows),
                                      test=datasets.Dataset.from_list(rows[:2]))
  dataset_dict.save_to_disk(str(tmp_path / "dict"))
  datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
                             ).save_to_disk(str(tmp_path / "one"))
  spec = {"name": "lf_hf", "hf_dataset": str(tmp_path / "dict"), "validation_split": "test", "format": "dolly",
          "cluster": "misc"}
  (task,), _ = local_files.register(spec, False)
  assert len(task.source("train")) == 5 and len(task.source("validation")) == 2
  assert task.source("train")[3]["messages"] == [("user", "Add."), ("input", "3 and 1"), ("assistant", "4")]
  (chat,), _ = local_files.register({"name": "lf_hf_one", "hf_dataset": str(tmp_path / "one"), "format": "messages",
                                     "cluster": "misc"}, False)
  assert chat.source("train")[0]["messages"] == [("user", "Hi"), ("assistant", "Yo")]
  with pytest.raises(ValueError, match=r"hf_dataset '.*dict' has no split 'dev'; its splits are \['test', 'train'\]"):
    local_files.register({**spec, "name": "lf_hf_dev", "split": "dev"}, False)
  monkeypatch.setattr("socket.socket.connect", lambda *a: (_ for _ in ()).throw(AssertionError("network used")))
  with pytest.raises(FileNotFoundError, match=r"hf_dataset 'someone/not_cached_here' is neither a directory written "
                                              r"by save_to_disk nor a dataset in the local Hugging Face cache") as error:
    local_files.register({**spec, "name": "lf_hf_missing", "hf_dataset": "someone/not_cached_here"}, False)
  assert "network used" not in str(error.value)
  with pytest.raises(KeyError, match="set one of 'path' and 'hf_dataset'"):
    local_files.register({**spec, "name": "lf_hf_both", "path": "x.jsonl"}, False)
  bad = [{"instruction": "Add.", "context": "x"}]
  datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
  with pytest.raises(Exception, match=r"bad\[train\] row 0: missing field 'response'"):
    local_files.register({**spec, "name": "lf_hf_bad", "hf_dataset": str(tmp_path / "bad"), "validation_split": ""},
                         False)


def test_preference_pairs_in_trls_forms(tmp_path):
  said = lambda role, text: {"role": role, "content": text}
  rows = [
      {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},  # strings
      {"prompt": [said("system", "Be kind."), said("user", "Hi")],  # a conversation, one answer each
       "chosen": [said("assistant", "Hello!")], "rejected": [said("assistant", "What?")]},
      {"chosen": [said("user", "Hi"), said("assistant", "Hi"), said("user", "Joke?"), said("assistant", "A pun.")],
       "rejected": [said("user", "Hi"), said("assistant", "Hi"), said("user", "Joke?"), said("assistant", "No.")]},
  ]
  (task,), _ = _register(tmp_path, rows, "lf_pref", format="preference")
  assert task.preference and task.conversational
  first, second, third = task.source("train")
  assert first["messages"] == [("user", "Name a colour."), ("assistant", "Blue.")] and first["rejected"] == "No."
  assert second["messages"] == [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!")]
  assert second["rejected"] == "What?"
  assert third["messages"] == [("user", "Hi"), ("assistant", "Hi"), ("user", "Joke?"), ("assistant", "A pun.")]
  assert third["rejected"] == "No." and third["answer"] == "A pun."


def test_preference_pairs_from_a_saved_hugging_face_dataset(tmp_path):
  """TRL's preference datasets (prompt, chosen and rejected as messages) saved with save_to_disk:
  the same pairs as from a file, a bad row named by its split and row."""
  import datasets
  said = lambda role, text: [{"role": role, "content": text}]
  rows = [{"prompt": said("user", f"Add {i} and 1."), "chosen": said("assistant", str(i + 1)),
           "rejected": said("assistant", str(i + 2))} for i in range(4)]
  splits = datasets.DatasetDict(train=datasets.Dataset.from_list(rows),
                                test=datasets.Dataset.from_list(rows[:1]))
  splits.save_to_disk(str(tmp_path / "pairs"))
  spec = {"name": "lf_hf_pref", "hf_dataset": str(tmp_path / "pairs"), "validation_split": "test",
          "format": "preference", "cluster": "preference"}
  (task,), _ = local_files.register(spec, False)
  assert task.preference and len(task.source("train")) == 4 and len(task.source("validation")) == 1
  third = task.source("train")[2]
  assert third["messages"] == [("user", "Add 2 and 1."), ("assistant", "3")]
  assert third["rejected"] == "4"
  rows[1]["rejected"] = rows[1]["chosen"]
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
  with pytest.raises(tasks.BadRecordError,
                     match=r"bad\[train\] row 1: the chosen and rejected answers are the same"):
    local_files.register({**spec, "name": "lf_hf_pref_bad", "hf_dataset": str(tmp_path / "bad"),
                          "validation_split": ""}, False)


@pytest.mark.parametrize("bad_row, message", [
    ({"prompt": "Q", "chosen": "same", "rejected": " same "}, "the chosen and rejected answers are the same"),
    ({"prompt": "Q", "chosen": "A", "rejected": ""}, "empty response"),
    ({"prompt": "", "chosen": "A", "rejected": "B"}, "the prompt must be non-empty turns ending with the user's"),
    ({"prompt": "Q", "chosen": "A"}, "missing or empty field 'rejected'"),
    ({"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
      "rejected": [{"role": "user", "content": "P"}, {"role": "assistant", "content": "B"}]},
     "without 'prompt', 'chosen' and 'rejected' must differ only in their last turn"),
])
def test_bad_preference_pairs_name_file_and_line(tmp_path, bad_row, message):
  good = {"prompt": "Q", "chosen": "A", "rejected": "B"}
  name = f"lf_{tmp_path.name}"  # one task name per case
  with pytest.raises(tasks.BadRecordError, match=f"{name}.jsonl:2: {message}"):
    _register(tmp_path, [good, bad_row], name, format="preference")
  (task,), skipped = _register(tmp_path, [good, bad_row], name, skip=True, format="preference")
  assert len(task.source("train")) == 1 and len(skipped) == 1
