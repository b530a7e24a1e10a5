"""Local instruction data: JSONL, JSON, CSV or Parquet files in the forms people have.

A local task is declared in config (`data.local_tasks`), for example
  dict(name="my_alpaca", path="data/train.jsonl", format="alpaca", cluster="emails")
  dict(name="my_dolly", hf_dataset="data/dolly", split="train", format="dolly", cluster="qa")
or, on the command line, as a JSON file holding one such spec or a list of them
(`--config.data.local_tasks=tasks.json`) or as inline JSON.

Formats (the columns each reads; `field_map` renames them, e.g. {"output": "answer"}):
  alpaca             instruction, input (optional), output
  dolly              instruction, context (optional), response
  prompt_completion  prompt, completion (T0/P3 and many exports)
  instances          instruction, instances: [{input, output}] (Self-Instruct, Super-NaturalInstructions);
                     one example per instance
  messages           messages: [{role, content}] (OpenAI style; every assistant turn is trained on)
  preference         prompt, chosen, rejected (TRL's form; for DPO, loss.kind="dpo"): strings, or
                     message lists: prompt the conversation so far, chosen and rejected its two
                     final assistant turns; or, without a prompt, chosen and rejected as whole
                     conversations that differ only in their last (assistant) turn
A response may be a list of strings: several references, the first trained on, the best one
scored. `response_suffix` is a marker every response of the file may end with (T0's
"<|endoftext|>"), removed where present.

Hugging Face datasets: `hf_dataset` instead of `path` names a directory written by `save_to_disk`
(a DatasetDict, or one Dataset, read as split "train") or a dataset in the local Hugging Face
cache, read offline (nothing is ever downloaded); `split` (default "train") holds the training
rows, `validation_split` the evaluation rows. Every row is read and checked at registration, but
only its position is kept: an example is converted from its memory-mapped row when read.

Clusters are free names: `cluster` for the whole file, or `cluster_field`, a column whose values
(optionally renamed by `cluster_map`) name each row's cluster; one task is registered per cluster,
named `<name>_<cluster>`. `path` may be a glob pattern (`t0/imdb_*.jsonl`: every file of one
dataset, one per template, as one task). `validation_path` is a file of evaluation rows in the
same form; `validation_rows: N` instead keeps the file's last N rows (per cluster) for evaluation.

Classification: `options` (a fixed list) or `options_field` (a column holding each row's list of
options, or a dict option -> score as BIG-bench's `target_scores`, the highest-scoring option being
the answer) makes a task that evaluation scores by rank classification; an answer outside its
options is an error. Generation tasks are scored by `metrics` (default ROUGE).

Safety: `refuse_field`, a column that is true for a request the model must decline and false for
one it must answer (JSON booleans; in CSV true/false or 1/0), marks examples as flan_mini's safety
task does; such a task is scored by the `refusal` metric (refusal and answer rates) unless
`metrics` says otherwise.

Templates: `templates`, a list of [prompt, response] patterns over the row's own columns and
`{instruction}`, `{input}`, `{answer}` and `{options_}` (the same `{field}` syntax and safety as
the registered tasks), renders each row through several instructions like any FLAN task.

Rows are read and checked when the task is registered. A bad row is an error naming the file
and line (or row), or, with `skip_bad_records`, a counted skip.
"""

import collections
import csv
import functools
import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from flan_jax import metrics as metrics_lib
from flan_jax.data import tasks, templates

FORMATS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
    "prompt_completion": {"instruction": "prompt", "output": "completion"},
    "instances": {"instruction": "instruction", "instances": "instances", "input": "input", "output": "output"},
    "messages": {"messages": "messages"},
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
}
OPTIONAL_FIELDS = ("input",)
SPEC_KEYS = ("name", "path", "hf_dataset", "split", "validation_split", "format", "cluster", "validation_path", "validation_rows", "field_map", "cluster_field",
             "cluster_map", "options", "options_field", "templates", "metrics", "response_suffix", "refuse_field")
MESSAGE_ROLES = ("system", "user", "assistant")
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
SPEC_FORM = ('a dict such as {"name": "mine", "path": "train.jsonl", "format": "alpaca", "cluster": "misc"}, '
             "a JSON file holding one or a list of them, or that JSON inline")


def specs(entries) -> list[dict]:
  """data.local_tasks -> spec dicts. An entry is a dict, a path to a JSON file of one spec or a list
  of specs, or such JSON inline (as `--config.data.local_tasks=tasks.json` gives it)."""
  out = []
  for entry in entries:
    if isinstance(entry, str):
      text, where = entry, "data.local_tasks"
      if not entry.lstrip().startswith(("{", "[")):
        if not os.path.isfile(entry):
          raise FileNotFoundError(f"data.local_tasks entry {entry!r} is neither a file nor JSON; expected {SPEC_FORM}")
        with open(entry) as f:
          text, where = f.read(), entry
      try:
        loaded = json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}:{e.lineno}: invalid JSON ({e.msg}); expected {SPEC_FORM}") from None
      entry = loaded
    entries_here = entry if isinstance(entry, list) else [entry]
    for spec in entries_here:
      if not hasattr(spec, "keys"):
        raise ValueError(f"data.local_tasks: {spec!r} is not a task spec; expected {SPEC_FORM}")
      out.append(dict(spec))
  return out


def read_rows(pattern: str):
  """Yields (place, parsed row or BadRecordError) of a file or of every file a glob pattern matches,
  the place being `path:line` or `path row i`."""
  paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
  if not paths:
    raise FileNotFoundError(f"local task pattern {pattern!r} matches no file")
  for path in paths:
    yield from _read_file(path)


def hf_split(name: str, split: str):
  """One split of a Hugging Face dataset (see the module docstring), memory-mapped from its Arrow
  files."""
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is first imported
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import datasets  # noqa: PLC0415 -- only for Hugging Face datasets
  if os.path.isdir(name):
    try:
      loaded = datasets.load_from_disk(name)
    except FileNotFoundError as error:
      raise FileNotFoundError(f"hf_dataset {name!r} is a directory but not one save_to_disk wrote ({error})") from None
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
  else:
    try:
      splits = dict(datasets.load_dataset(name))
    except Exception as error:  # noqa: BLE001 -- datasets raises many kinds, all meaning "not here"
      raise FileNotFoundError(f"hf_dataset {name!r} is neither a directory written by save_to_disk nor a dataset "
                              f"in the local Hugging Face cache (nothing is downloaded): {error}") from None
  if split not in splits:
    raise ValueError(f"hf_dataset {name!r} has no split {split!r}; its splits are {sorted(splits)}")
  return splits[split]


class ArrowExamples(Sequence):
  """The examples of a Hugging Face dataset split, each converted from its row when read: memory
  holds the Arrow files' mapping and a (row, part) position per example, not the examples.
  `positions` [n, 2] int64: the row, and which of the row's examples (instances) it is. Rows are
  read from the Arrow columns themselves (5 us a row; datasets' own row access takes 35)."""

  def __init__(self, spec: dict, columns: dict, place: str, positions: np.ndarray):
    self.spec, self.columns, self.place, self.positions = spec, columns, place, positions

  def __len__(self) -> int:
    return len(self.positions)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return ArrowExamples(self.spec, self.columns, self.place, self.positions[index])
    row, part = (int(i) for i in self.positions[index])
    values = {name: column[row].as_py() for name, column in self.columns.items()}
    return row_examples(self.spec, values, f"{self.place} row {row}")[1][part]


def load_hf(spec: dict, split: str, skip_bad_records: bool) -> tuple[dict[str, ArrowExamples], list[str]]:
  """load() of a Hugging Face dataset split: every row is read and checked once, and kept as its
  position only."""
  name = spec["hf_dataset"]
  dataset, place = hf_split(name, split), f"{name}[{split}]"
  positions, skipped, row = collections.defaultdict(list), [], 0
  for batch in dataset.iter(batch_size=1024):
    for values in zip(*batch.values()):
      try:
        cluster, examples = row_examples(spec, dict(zip(batch, values)), f"{place} row {row}")
        positions[cluster] += [(row, part) for part in range(len(examples))]
      except tasks.BadRecordError as e:
        if not skip_bad_records:
          raise
        skipped.append(str(e))
      row += 1
  columns = {name: dataset.data.column(name) for name in dataset.column_names}
  return {cluster: ArrowExamples(spec, columns, place, np.asarray(p, np.int64).reshape(-1, 2))
          for cluster, p in positions.items()}, skipped


def _read_file(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"local task file {path!r} does not exist")
  if not path.endswith(FILE_TYPES):
    raise ValueError(f"local task file {path!r}: unknown file type; use one of {', '.join(FILE_TYPES)}")
  if path.endswith(".parquet"):
    import pyarrow.parquet  # noqa: PLC0415 -- only for Parquet files
    yield from ((f"{path} row {i}", row) for i, row in enumerate(pyarrow.parquet.read_table(path).to_pylist()))
    return
  with open(path, "rb") as f:
    raw = f.read()
  if path.endswith((".json", ".csv")):
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise tasks.BadRecordError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    if path.endswith(".csv"):
      reader = csv.DictReader(text.splitlines(keepends=True))
      for row in reader:
        yield f"{path}:{reader.line_num}", row
      return
    try:
      rows = json.loads(text)
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


def _text(row: dict, column: str, where: str, optional: bool = False) -> str:
  if column not in row or row[column] is None:
    if optional:
      return ""
    raise tasks.BadRecordError(f"{where}: missing field {column!r}")
  if not isinstance(row[column], str):
    raise tasks.BadRecordError(f"{where}: field {column!r} is not a string")
  return row[column]


def _references(row: dict, column: str, suffix: str, where: str) -> list[str]:
  """A response column: a string or a non-empty list of strings, less the file's response suffix."""
  value = row.get(column)
  if column not in row:
    raise tasks.BadRecordError(f"{where}: missing field {column!r}")
  values = value if isinstance(value, list) else [value]
  if not values or not all(isinstance(v, str) for v in values):
    raise tasks.BadRecordError(f"{where}: field {column!r} must be a string or a list of strings")
  values = [v.removesuffix(suffix) if suffix else v for v in values]
  if not all(v.strip() for v in values):
    raise tasks.BadRecordError(f"{where}: empty response")
  return values


def _turns(messages, column: str, where: str) -> list[tuple[str, str]]:
  """A non-empty message list [{role, content}] as [(role, text)]."""
  if not isinstance(messages, list) or not messages:
    raise tasks.BadRecordError(f"{where}: missing or empty field {column!r}")
  turns = []
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES or not isinstance(m.get("content"), str):
      raise tasks.BadRecordError(f"{where}: {column!r} message {i} needs a role in {MESSAGE_ROLES} "
                                 "and a string content")
    turns.append((m["role"], m["content"]))
  return turns


def _preference(row: dict, columns: dict, where: str) -> dict:
  """A preference row as {"messages": the prompt's turns and the chosen answer, "rejected": the
  rejected answer, "answer", "references"}; see the module docstring for its forms."""
  answers = {}
  for key in ("chosen", "rejected"):
    value = row.get(columns[key])
    if isinstance(value, str):
      answers[key] = [("assistant", value)]
    else:
      answers[key] = _turns(value, columns[key], where)
    if answers[key][-1][0] != "assistant":
      raise tasks.BadRecordError(f"{where}: the last message of {columns[key]!r} must be the assistant's")
  chosen, rejected = answers["chosen"], answers["rejected"]
  prompt = row.get(columns["prompt"])
  if prompt is None and columns["prompt"] not in row:  # implicit: the conversations' shared turns
    if chosen[:-1] != rejected[:-1]:
      raise tasks.BadRecordError(f"{where}: without {columns['prompt']!r}, {columns['chosen']!r} and "
                                 f"{columns['rejected']!r} must differ only in their last turn")
    turns = chosen[:-1]
  else:
    turns = [("user", prompt)] if isinstance(prompt, str) else _turns(prompt, columns["prompt"], where)
    if len(chosen) != 1 or len(rejected) != 1:
      raise tasks.BadRecordError(f"{where}: with {columns['prompt']!r}, {columns['chosen']!r} and "
                                 f"{columns['rejected']!r} are one assistant turn each")
  if not turns or turns[-1][0] == "assistant" or not all(text.strip() for _, text in turns):
    raise tasks.BadRecordError(f"{where}: the prompt must be non-empty turns ending with the user's")
  good, bad = chosen[-1][1], rejected[-1][1]
  if not good.strip() or not bad.strip():
    raise tasks.BadRecordError(f"{where}: empty response")
  if good.strip() == bad.strip():
    raise tasks.BadRecordError(f"{where}: the chosen and rejected answers are the same")
  return {"messages": [*turns, ("assistant", good)], "rejected": bad, "answer": good,
          "references": [good]}


def to_examples(row, fmt: str, field_map: dict[str, str], where: str, suffix: str = "") -> list[dict]:
  """One parsed row -> examples: {"messages": [(role, text)], "answer", "references", "instruction",
  "input"} (the last three for templates; a preference row has "rejected" instead); raises
  BadRecordError naming `where`."""
  if isinstance(row, tasks.BadRecordError):
    raise row
  if not isinstance(row, dict):
    raise tasks.BadRecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
  columns = {**FORMATS[fmt], **field_map}
  if fmt == "preference":
    return [_preference(row, columns, where)]
  if fmt == "messages":
    turns = _turns(row.get(columns["messages"]), columns["messages"], where)
    if turns[-1][0] != "assistant":
      raise tasks.BadRecordError(f"{where}: the last message must be the assistant's")
    if any(role == "assistant" and not text.strip() for role, text in turns):
      raise tasks.BadRecordError(f"{where}: empty response")
    if not turns[0][1].strip():
      raise tasks.BadRecordError(f"{where}: empty {turns[0][0]} text")
    return [{"messages": turns, "answer": turns[-1][1], "references": [turns[-1][1]]}]
  instruction = _text(row, columns["instruction"], where)
  if not instruction.strip():
    raise tasks.BadRecordError(f"{where}: empty {columns['instruction']!r}")
  if fmt == "instances":
    instances = row.get(columns["instances"])
    if not isinstance(instances, list) or not instances:
      raise tasks.BadRecordError(f"{where}: missing or empty field {columns['instances']!r}")
    parts = [(f"{where} instance {i}", instance) for i, instance in enumerate(instances)]
  else:
    parts = [(where, row)]
  examples = []
  for place, part in parts:
    if not isinstance(part, dict):
      raise tasks.BadRecordError(f"{place}: expected an object, got {type(part).__name__}")
    text_input = _text(part, columns["input"], place, optional=True) if "input" in columns else ""
    references = _references(part, columns["output"], suffix, place)
    turns = [("user", instruction)] + ([("input", text_input)] if text_input.strip() else [])
    examples.append({"messages": [*turns, ("assistant", references[0])], "answer": references[0],
                     "references": references, "instruction": instruction, "input": text_input})
  return examples


def _options(spec: dict, row: dict, example: dict, where: str):
  """The example's options and answer for a classification spec; the answer must be among them."""
  if spec.get("options"):
    options = [str(o) for o in spec["options"]]
  else:
    column = spec["options_field"]
    value = row.get(column) if isinstance(row, dict) else None
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):  # CSV cells hold JSON
      try:
        value = json.loads(value)
      except json.JSONDecodeError:
        pass
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
      options = list(value)
      example["answer"] = max(value, key=lambda k: value[k])  # BIG-bench target_scores
      example["references"] = [example["answer"]]
      example["messages"] = [*example["messages"][:-1], ("assistant", example["answer"])]
    elif isinstance(value, list) and value and all(isinstance(o, str) for o in value):
      options = value
    else:
      raise tasks.BadRecordError(f"{where}: options_field {column!r} must hold a list of strings or a dict "
                                 f"option -> score, not {value!r}")
  if example["answer"] not in options:
    raise tasks.BadRecordError(f"{where}: the answer {example['answer']!r} is not one of the options {options}")
  return options


def _refuse(column: str, row: dict, where: str) -> bool:
  value = row.get(column)
  if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
    return value.strip().lower() in ("true", "1")
  if not isinstance(value, bool):
    raise tasks.BadRecordError(f"{where}: refuse_field {column!r} must be true or false, not {value!r}")
  return value


def _cluster(spec: dict, row, where: str) -> str:
  if not spec.get("cluster_field"):
    return spec["cluster"]
  column = spec["cluster_field"]
  if not isinstance(row, dict) or column not in row:
    raise tasks.BadRecordError(f"{where}: missing cluster field {column!r}")
  value = row[column]
  cluster_map = spec.get("cluster_map") or {}
  key = value if isinstance(value, str) else json.dumps(value)
  cluster = cluster_map.get(key, value)
  if not isinstance(cluster, str) or not cluster.strip():
    raise tasks.BadRecordError(f"{where}: cluster field {column!r} has value {value!r}, not a non-empty string; "
                               f"name it in cluster_map (keyed by {key!r})")
  return cluster


def row_examples(spec: dict, row, where: str) -> tuple[str, list[dict]]:
  """(cluster, examples) of one parsed row under a spec; raises BadRecordError naming `where`."""
  examples = to_examples(row, spec["format"], dict(spec.get("field_map") or {}), where,
                         spec.get("response_suffix") or "")
  cluster = _cluster(spec, row, where)
  for example in examples:
    if spec.get("options") or spec.get("options_field"):
      example["options"] = _options(spec, row, example, where)
    if spec.get("templates"):
      example.update({k: v for k, v in row.items() if isinstance(v, str) and k not in example})
    if spec.get("refuse_field"):
      example["refuse"] = _refuse(spec["refuse_field"], row, where)
  return cluster, examples


def load(spec: dict, path: str, skip_bad_records: bool) -> tuple[dict[str, list], list[str]]:
  """Examples of one file (or glob pattern) grouped by cluster, and the messages of skipped rows."""
  by_cluster, skipped = {}, []
  for where, row in read_rows(path):
    try:
      cluster, examples = row_examples(spec, row, where)
    except tasks.BadRecordError as e:
      if not skip_bad_records:
        raise
      skipped.append(str(e))
      continue
    by_cluster.setdefault(cluster, []).extend(examples)
  return by_cluster, skipped


def _source(spec: dict) -> str:
  return spec.get("path") or spec["hf_dataset"]


def _check_spec(spec: dict):
  name = spec.get("name")
  unknown = sorted(set(spec) - set(SPEC_KEYS))
  if unknown:
    raise KeyError(f"local task {name!r}: unknown key(s) {unknown}; keys are {SPEC_KEYS}")
  for key in ("name", "format"):
    if not spec.get(key):
      raise KeyError(f"local task {name!r}: missing {key!r}")
  if bool(spec.get("path")) == bool(spec.get("hf_dataset")):
    raise KeyError(f"local task {name!r}: set one of 'path' and 'hf_dataset'")
  if not spec.get("hf_dataset") and (spec.get("split") or spec.get("validation_split")):
    raise KeyError(f"local task {name!r}: 'split' and 'validation_split' go with 'hf_dataset'")
  if sum(bool(spec.get(k)) for k in ("validation_path", "validation_rows", "validation_split")) > 1:
    raise KeyError(f"local task {name!r}: set one of 'validation_path', 'validation_rows' and 'validation_split'")
  if spec["format"] not in FORMATS:
    raise ValueError(f"local task {name!r}: unknown format {spec['format']!r}; formats are {sorted(FORMATS)}")
  if not spec.get("cluster") and not spec.get("cluster_field"):
    raise KeyError(f"local task {name!r}: set 'cluster' or 'cluster_field'")
  if spec.get("cluster") is not None and not isinstance(spec["cluster"], str):
    raise ValueError(f"local task {name!r}: 'cluster' must be a string, not {spec['cluster']!r}")
  if spec.get("options") and spec.get("options_field"):
    raise KeyError(f"local task {name!r}: set one of 'options' and 'options_field'")
  if spec.get("templates") and spec["format"] in ("messages", "preference"):
    raise ValueError(f"local task {name!r}: 'templates' need a format with columns, not {spec['format']!r}")
  extras = [k for k in ("options", "options_field", "refuse_field") if spec.get(k)]
  if extras and spec["format"] == "preference":
    raise ValueError(f"local task {name!r}: {extras} do not go with preference pairs")
  metrics_lib.check(spec.get("metrics") or (), where=f"local task {name!r}")


def _templates(spec: dict) -> tuple[templates.Template, ...]:
  out = []
  for i, pattern in enumerate(spec.get("templates") or ()):
    pair = (pattern.get("prompt"), pattern.get("response", "{answer}")) if isinstance(pattern, dict) else pattern
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
      raise ValueError(f"local task {spec['name']!r}: template {i} must be [prompt, response] or "
                       f"{{'prompt': ..., 'response': ...}}, not {pattern!r}")
    out.append(templates.Template(prompt=pair[0], response=pair[1]))
  return tuple(out)


@functools.cache
def _register(spec_json: str, skip_bad_records: bool) -> tuple[tuple[tasks.Task, ...], tuple[str, ...]]:
  spec = json.loads(spec_json)
  _check_spec(spec)
  if spec.get("hf_dataset"):
    train, skipped = load_hf(spec, spec.get("split") or "train", skip_bad_records)
  else:
    train, skipped = load(spec, spec["path"], skip_bad_records)
  validation = {}
  if spec.get("validation_path") or spec.get("validation_split"):
    validation, more = (load_hf(spec, spec["validation_split"], skip_bad_records) if spec.get("validation_split")
                        else load(spec, spec["validation_path"], skip_bad_records))
    skipped += more
  elif spec.get("validation_rows"):
    keep = int(spec["validation_rows"])
    validation = {cluster: rows[-keep:] for cluster, rows in train.items()}
    train = {cluster: rows[:-keep] for cluster, rows in train.items()}
  if not train and not validation:
    raise ValueError(f"local task {spec['name']!r}: no usable row in {_source(spec)!r} ({len(skipped)} "
                     f"skipped, e.g. {skipped[0] if skipped else 'none'})")
  task_templates = _templates(spec)
  classification = bool(spec.get("options") or spec.get("options_field"))
  default = ("accuracy", "macro_f1") if classification else ("refusal", "rouge") if spec.get("refuse_field") else ("rouge",)
  metrics = tuple(spec.get("metrics") or default)
  per_cluster = bool(spec.get("cluster_field"))
  registered = []
  for cluster in sorted(set(train) | set(validation)):
    name = f"{spec['name']}_{cluster}" if per_cluster else spec["name"]
    splits = {"train": train.get(cluster, []), "validation": validation.get(cluster, [])}
    task = tasks.Task(name=name, cluster=cluster, source=splits.__getitem__, preprocess=dict,
                      templates=task_templates, metrics=metrics, per_example_options=classification,
                      conversational=not task_templates, preference=spec["format"] == "preference")
    _check_templates(task, splits, spec)
    registered.append(tasks.register(task))
  return tuple(registered), tuple(skipped)


def _check_templates(task: tasks.Task, splits: dict, spec: dict):
  """Renders the first example through every template, so a broken one fails here, naming the task."""
  first = (splits["train"] or splits["validation"])[:1]
  for example in first:
    for i, template in enumerate(task.templates):
      options = task.example_options(example) if task.is_classification else None
      templates.render_pair(template, example, options=options, show_options=True, chain_of_thought=False,
                            where=f"local task {spec['name']!r} ({_source(spec)}), template {i}")


def register(spec: dict, skip_bad_records: bool) -> tuple[tuple[tasks.Task, ...], tuple[str, ...]]:
  """Registers the tasks of one local-file spec; returns (tasks, messages of skipped rows)."""
  return _register(json.dumps(spec, sort_keys=True), skip_bad_records)
