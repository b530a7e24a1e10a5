"""Local JSONL/JSON instruction data: Alpaca, Dolly and OpenAI-style `messages` rows.

A local task is declared in config (`data.local_tasks`), for example
  dict(name="my_alpaca", path="data/train.jsonl", format="alpaca", cluster="misc")
with optional keys `validation_path`, `field_map` (our field -> column name, e.g.
{"output": "answer"}), and `cluster_field` plus `cluster_map` to take each row's
cluster from a column (Dolly's `category`): one task is registered per cluster,
named `<name>_<cluster>`.

Rows are read and checked when the task is registered. A bad row is an error
naming the file and line, or, with `skip_bad_records`, a counted skip.
"""

import functools
import json
import os

from flan_jax.data import tasks

FORMATS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
    "messages": {"messages": "messages"},
}
OPTIONAL_FIELDS = ("input",)
SPEC_KEYS = ("name", "path", "format", "cluster", "validation_path", "field_map", "cluster_field", "cluster_map")
MESSAGE_ROLES = ("system", "user", "assistant")


def read_rows(path: str):
  """Yields (place, parsed row or BadRecordError), the place being `path:line` or `path record i`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"local task file {path!r} does not exist")
  with open(path, "rb") as f:
    raw = f.read()
  if path.endswith(".json"):
    try:
      rows = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise tasks.BadRecordError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
      raise tasks.BadRecordError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(rows, list):
      raise tasks.BadRecordError(f"{path}: expected a JSON array of records")
    yield from ((f"{path} record {i}", row) for i, row in enumerate(rows))
    return
  for number, line in enumerate(raw.split(b"\n"), start=1):
    if not line.strip():
      continue
    place = f"{path}:{number}"
    try:
      yield place, json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
      yield place, tasks.BadRecordError(f"{place}: not valid UTF-8 at byte {e.start}")
    except json.JSONDecodeError as e:
      yield place, tasks.BadRecordError(f"{place}: invalid JSON ({e.msg})")


def to_conversation(row, fmt: str, field_map: dict[str, str], where: str) -> list[tuple[str, str]]:
  """One parsed row -> [(role, text)]; raises BadRecordError naming `where`."""
  if isinstance(row, tasks.BadRecordError):
    raise row
  if not isinstance(row, dict):
    raise tasks.BadRecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
  columns = {**FORMATS[fmt], **field_map}

  def text(field):
    column = columns[field]
    if column not in row:
      if field in OPTIONAL_FIELDS:
        return ""
      raise tasks.BadRecordError(f"{where}: missing field {column!r}")
    if not isinstance(row[column], str):
      raise tasks.BadRecordError(f"{where}: field {column!r} is not a string")
    return row[column]

  if fmt == "messages":
    messages = row.get(columns["messages"])
    if not isinstance(messages, list) or not messages:
      raise tasks.BadRecordError(f"{where}: missing or empty field {columns['messages']!r}")
    turns = []
    for i, m in enumerate(messages):
      if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES or not isinstance(m.get("content"), str):
        raise tasks.BadRecordError(f"{where}: message {i} needs a role in {MESSAGE_ROLES} and a string content")
      turns.append((m["role"], m["content"]))
    if turns[-1][0] != "assistant":
      raise tasks.BadRecordError(f"{where}: the last message must be the assistant's")
  else:
    turns = [("user", text("instruction"))]
    if text("input").strip():
      turns.append(("input", text("input")))
    turns.append(("assistant", text("output")))
  for role, content in turns:
    if role == "assistant" and not content.strip():
      raise tasks.BadRecordError(f"{where}: empty response")
  if not turns[0][1].strip():
    raise tasks.BadRecordError(f"{where}: empty {turns[0][0]} text")
  return turns


def load(spec: dict, path: str, skip_bad_records: bool) -> tuple[dict[str, list], list[str]]:
  """Rows of one file grouped by cluster, and the messages of skipped rows."""
  fmt = spec["format"]
  field_map, cluster_map = dict(spec.get("field_map") or {}), dict(spec.get("cluster_map") or {})
  by_cluster, skipped = {}, []
  for where, row in read_rows(path):
    try:
      conversation = to_conversation(row, fmt, field_map, where)
      cluster = spec.get("cluster") or ""
      if spec.get("cluster_field"):
        value = row.get(spec["cluster_field"])
        cluster = cluster_map.get(value, value)
        if cluster not in tasks.CLUSTERS:
          raise tasks.BadRecordError(
              f"{where}: {spec['cluster_field']!r} value {value!r} is not a FLAN cluster; map it in cluster_map")
    except tasks.BadRecordError as e:
      if not skip_bad_records:
        raise
      skipped.append(str(e))
      continue
    by_cluster.setdefault(cluster, []).append({"messages": conversation, "answer": conversation[-1][1]})
  return by_cluster, skipped


@functools.cache
def _register(spec_json: str, skip_bad_records: bool) -> tuple[tuple[tasks.Task, ...], tuple[str, ...]]:
  spec = json.loads(spec_json)
  unknown = sorted(set(spec) - set(SPEC_KEYS))
  if unknown:
    raise KeyError(f"local task {spec.get('name')!r}: unknown key(s) {unknown}; keys are {SPEC_KEYS}")
  for key in ("name", "path", "format"):
    if not spec.get(key):
      raise KeyError(f"local task {spec.get('name')!r}: missing {key!r}")
  if spec["format"] not in FORMATS:
    raise ValueError(f"local task {spec['name']!r}: unknown format {spec['format']!r}; formats are {sorted(FORMATS)}")
  if not spec.get("cluster") and not spec.get("cluster_field"):
    raise KeyError(f"local task {spec['name']!r}: set 'cluster' or 'cluster_field'")
  train, skipped = load(spec, spec["path"], skip_bad_records)
  validation = {}
  if spec.get("validation_path"):
    validation, more = load(spec, spec["validation_path"], skip_bad_records)
    skipped += more
  per_cluster = bool(spec.get("cluster_field"))
  registered = []
  for cluster in sorted(set(train) | set(validation)):
    name = f"{spec['name']}_{cluster}" if per_cluster else spec["name"]
    splits = {"train": train.get(cluster, []), "validation": validation.get(cluster, [])}
    registered.append(tasks.register(tasks.Task(
        name=name, cluster=cluster, source=splits.__getitem__, preprocess=dict, templates=(),
        metrics=("rouge",), conversational=True)))
  return tuple(registered), tuple(skipped)


def register(spec: dict, skip_bad_records: bool) -> tuple[tuple[tasks.Task, ...], tuple[str, ...]]:
  """Registers the tasks of one local-file spec; returns (tasks, messages of skipped rows)."""
  return _register(json.dumps(spec, sort_keys=True), skip_bad_records)
