import json

import pytest

from flan_jax.data import local_files, pipeline, tasks


def _write(path, rows):
  path.write_bytes(b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows) + b"\n")
  return str(path)


def _register(tmp_path, rows, name, skip=False, **spec):
  path = _write(tmp_path / f"{name}.jsonl", rows)
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


def test_field_map_and_cluster_column(tmp_path):
  rows = [{"q": "Capital of France?", "a": "Paris", "kind": "open_qa"},
          {"q": "Is 2 even?", "a": "yes", "kind": "classification"},
          {"q": "Summarise: x", "a": "x", "kind": "summarization"}]
  registered, _ = _register(tmp_path, rows, "lf_mapped", cluster="", cluster_field="kind",
                            field_map={"instruction": "q", "output": "a"},
                            cluster_map={"open_qa": "closed_book_qa", "classification": "misc"})
  assert {t.name: t.cluster for t in registered} == {
      "lf_mapped_closed_book_qa": "closed_book_qa", "lf_mapped_misc": "misc", "lf_mapped_summarization": "summarization"}
  with pytest.raises(tasks.BadRecordError, match=r"lf_badcluster.jsonl:1: 'kind' value 'poetry' is not a FLAN cluster"):
    _register(tmp_path, [{"instruction": "a", "output": "b", "kind": "poetry"}], "lf_badcluster", cluster="",
              cluster_field="kind")


@pytest.mark.parametrize("bad_row, message", [
    (b'{"instruction": "a", "output": ', r"lf_bad.jsonl:2: invalid JSON"),
    ({"instruction": "a"}, r"lf_bad.jsonl:2: missing field 'output'"),
    (b'{"instruction": "caf\xe9", "output": "b"}', r"lf_bad.jsonl:2: not valid UTF-8"),
    ({"instruction": "a", "output": "  "}, r"lf_bad.jsonl:2: empty response"),
    ({"instruction": "a", "output": 3}, r"lf_bad.jsonl:2: field 'output' is not a string"),
    ([1, 2], r"lf_bad.jsonl:2: expected a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad_row, message):
  good = {"instruction": "a", "output": "b"}
  with pytest.raises(tasks.BadRecordError, match=message):
    _register(tmp_path, [good, bad_row, good], "lf_bad")


def test_bad_messages(tmp_path):
  with pytest.raises(tasks.BadRecordError, match="lf_msg.jsonl:1: the last message must be the assistant's"):
    _register(tmp_path, [{"messages": [{"role": "user", "content": "hi"}]}], "lf_msg", format="messages")
  with pytest.raises(tasks.BadRecordError, match="lf_msg2.jsonl:1: message 0 needs a role"):
    _register(tmp_path, [{"messages": [{"role": "robot", "content": "hi"}]}], "lf_msg2", format="messages")


def test_skip_bad_records_counts_every_skip(tmp_path):
  rows = [{"instruction": "a", "output": "b"}, b"not json", {"instruction": "c"}, {"instruction": "d", "output": "e"}]
  (task,), skipped = _register(tmp_path, rows, "lf_skip", skip=True)
  assert len(task.source("train")) == 2
  assert len(skipped) == 2 and "lf_skip.jsonl:2" in skipped[0] and "lf_skip.jsonl:3" in skipped[1]


def test_bad_specs(tmp_path):
  path = _write(tmp_path / "ok.jsonl", [{"instruction": "a", "output": "b"}])
  with pytest.raises(KeyError, match="unknown key.*'colour'"):
    local_files.register({"name": "lf_s1", "path": path, "format": "alpaca", "cluster": "misc", "colour": 1}, False)
  with pytest.raises(ValueError, match="unknown format 'csv'"):
    local_files.register({"name": "lf_s2", "path": path, "format": "csv", "cluster": "misc"}, False)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    local_files.register({"name": "lf_s3", "path": str(tmp_path / "nope.jsonl"), "format": "alpaca",
                          "cluster": "misc"}, False)


def test_local_task_in_the_pipeline(tmp_path, tiny_config, tokenizer):
  rows = [{"instruction": f"Repeat {i}.", "output": f"{i}"} for i in range(50)] + [b"{broken"]
  path = _write(tmp_path / "mine.jsonl", rows)
  data = tiny_config.data
  data.mixture = ()
  data.held_out_clusters = ()
  data.local_tasks = ({"name": "lf_pipe", "path": path, "format": "alpaca", "cluster": "misc"},)
  with pytest.raises(tasks.BadRecordError, match="mine.jsonl:51: invalid JSON"):
    pipeline.resolve_mixture(data)
  data.skip_bad_records = True
  mix = pipeline.resolve_mixture(data)
  assert [t.name for t in mix.train] == ["lf_pipe"] and mix.skipped_rows
  batch = next(iter(pipeline.batches(data, mix, tokenizer, pipeline.Stats(), seed=0)))
  text = tokenizer.decode(batch["inputs"][0])
  assert "Repeat" in text
