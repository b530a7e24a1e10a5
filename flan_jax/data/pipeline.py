"""The input pipeline: the mixture a config names, resolved (its tasks from data/sources/, the
held-out clusters split off, examples-proportional rates, and the hygiene that drops training
examples contaminating an evaluation set or duplicating one another), then Grain stages: mix ->
render (data/render.py) -> tokenize -> pack -> batch.

Everything is a pure function of (config, seed, process index): every task's
records are shuffled and repeated forever, mixed at their rates, sharded by
process, rendered through a template chosen by a per-element RNG, tokenized,
truncated, packed and batched. The iterator's `get_state()` is a small dict;
`set_state()` on a fresh iterator resumes exactly where it was taken.
"""

import ctypes
import dataclasses
import functools
import hashlib
import json
import signal
import sys
import zlib

import grain
import numpy as np
from absl import flags
from etils import epath
from grain import experimental as grain_experimental

from flan_jax.data import decontamination, deduplication, mixture, packing, sources, tasks
from flan_jax.data.render import Renderer, Stats
from flan_jax.data.tokenizer import Tokenizer

MIX_SHUFFLE_WINDOW = 10_000
PREFETCH_BATCHES = 2
PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclasses.dataclass(frozen=True)
class Mixture:
  train: tuple[tasks.Task, ...]
  evaluation: tuple[tasks.Task, ...]  # zero-shot tasks of the held-out clusters
  rates: dict[str, float]  # normalised sampling rate of each training task
  sizes: dict[str, int]  # training examples per task: len(kept[task])
  kept: dict[str, np.ndarray]  # task -> training indices trained on (capped, less drops), ascending
  skipped_rows: tuple[str, ...]  # local-file rows skipped under skip_bad_records
  contamination: dict | None = None  # decontamination.Found.report(), unless data.decontamination.mode is off
  duplicates: dict = dataclasses.field(default_factory=dict)  # deduplication.Duplicates.report()


def task_names(data_cfg) -> tuple[list[str], list[str]]:
  """(the mixture and task names of data.mixture and data.local_tasks, the local rows skipped under
  skip_bad_records); registers the local tasks."""
  names, skipped_rows = list(data_cfg.mixture), []
  for spec in sources.local_files.specs(data_cfg.local_tasks):
    registered, skipped = sources.local_files.register(spec, data_cfg.skip_bad_records)
    names += [t.name for t in registered]
    skipped_rows += skipped
  if not names:
    raise ValueError("data.mixture and data.local_tasks are both empty")
  return names, skipped_rows


def split_tasks(data_cfg) -> tuple[list[tasks.Task], list[tasks.Task]]:
  """(training tasks, held-out evaluation tasks), without the rates and decontamination of
  resolve_mixture: what evaluation and reports need."""
  return mixture.split_by_held_out(task_names(data_cfg)[0], list(data_cfg.held_out_clusters))


def resolve_mixture(data_cfg) -> Mixture:
  """The training tasks and their examples: each task capped at data.max_examples_per_task first,
  then less the examples that contaminate evaluation sets (data.decontamination) or repeat one
  another (data.deduplication); examples-proportional rates over what is kept."""
  names, skipped_rows = task_names(data_cfg)
  train, evaluation = mixture.split_by_held_out(names, list(data_cfg.held_out_clusters))
  sizes = {t.name: len(t.source(t.splits[0])) for t in mixture.leaf_tasks(names)}
  kept = {t.name: mixture.capped(t, data_cfg.max_examples_per_task) for t in train}
  contamination, dropped = decontaminate(data_cfg, train, evaluation, kept)
  kept = {name: np.setdiff1d(indices, list(dropped.get(name, ()))) for name, indices in kept.items()}
  dedup = data_cfg.deduplication
  duplicates = deduplication.find(train, dedup.mode, dedup.ngram, dedup.threshold, kept)
  duplicate_report = duplicates.report({name: len(indices) for name, indices in kept.items()})
  kept = {name: np.setdiff1d(indices, list(duplicates.dropped.get(name, ())))
          for name, indices in kept.items()}
  sizes.update({name: len(indices) for name, indices in kept.items()})
  empty = [t.name for t in train if sizes[t.name] == 0]
  if empty:
    raise ValueError(f"training task(s) {empty} have no training examples")
  all_rates = mixture.rates(names, sizes=sizes, cap=data_cfg.example_cap, temperature=data_cfg.temperature,
                            weights=dict(data_cfg.weights))
  total = sum(all_rates[t.name] for t in train)
  return Mixture(train=tuple(train), evaluation=tuple(evaluation),
                 rates={t.name: all_rates[t.name] / total for t in train},
                 sizes={t.name: sizes[t.name] for t in train}, kept=kept, skipped_rows=tuple(skipped_rows),
                 contamination=contamination, duplicates=duplicate_report)


def check_preference_tasks(mix: Mixture, *, pairs: bool):
  """Raises unless every training task is a preference task (format "preference") with `pairs`
  (DPO), and none without."""
  wrong = [t.name for t in mix.train if t.preference != pairs]
  if wrong:
    raise ValueError(f"training task(s) {wrong} " + (
        "are not preference pairs (format 'preference'), which loss.kind='dpo' trains on" if pairs else
        "hold preference pairs (format 'preference'): train them with loss.kind='dpo'"))


DECONTAMINATION_MODES = ("off", "report", "drop")


def decontaminate(data_cfg, train, evaluation, candidates) -> tuple[dict | None, dict[str, frozenset[int]]]:
  """(report, training indices to drop per task) of data.decontamination: training examples
  against the held-out tasks' evaluation instances, the seen validation splits with include_seen,
  and every split of the evaluation_files (local-file specs, checked and never trained on)."""
  cfg = data_cfg.decontamination
  if cfg.mode not in DECONTAMINATION_MODES:
    raise ValueError(f"data.decontamination.mode={cfg.mode!r}: choose from {', '.join(DECONTAMINATION_MODES)}")
  if cfg.mode == "off":
    return None, {}
  sets = [(f"held_out:{t.name}", t, t.evaluation_split(held_out=True)) for t in evaluation]
  if cfg.include_seen:
    sets += [(f"seen:{t.name}", t, t.splits[1]) for t in train if len(t.source(t.splits[1]))]
  for spec in sources.local_files.specs(cfg.evaluation_files):
    try:
      registered = sources.local_files.register(spec, data_cfg.skip_bad_records)[0]
    except (OSError, ValueError, KeyError) as e:  # BadRecordError is a ValueError
      raise type(e)(f"data.decontamination.evaluation_files: {e}") from None
    for task in registered:
      sets += [(f"file:{task.name}:{split}", task, split) for split in task.splits if len(task.source(split))]
  found = decontamination.find(tuple(train), tuple(sets), cfg.ngram, cfg.threshold,
                               data_cfg.max_examples_per_task)
  sizes = {name: len(indices) for name, indices in candidates.items()}
  if cfg.mode == "report":
    return found.report(sizes), {}
  dropped = {name: frozenset(f["index"] for f in flagged) for name, flagged in found.flagged.items()}
  too_many = {name: f"{len(indices)} of {sizes[name]}" for name, indices in dropped.items()
              if len(indices) > cfg.max_drop_fraction * sizes[name]}
  if too_many:
    raise ValueError(f"data.decontamination would drop more than max_drop_fraction={cfg.max_drop_fraction} of "
                     f"training task(s) {too_many}; see `python -m flan_jax.data --config ...` (with "
                     "data.decontamination.mode=report) for what they share with the evaluation sets")
  return found.report(sizes), dropped


def _records_digest(records, indices=None) -> str:
  digest = hashlib.sha256()
  for i in range(len(records)) if indices is None else indices:
    digest.update(json.dumps(records[int(i)], sort_keys=True, default=str).encode() + b"\n")
  return digest.hexdigest()


def evaluation_checksums(data_cfg) -> dict[str, str]:
  """sha256 of every evaluation set a run holds out or checks against: the held-out tasks'
  evaluation splits and every split of data.decontamination.evaluation_files."""
  sets = [(t.name, t, t.evaluation_split(held_out=True)) for t in split_tasks(data_cfg)[1]]
  for spec in sources.local_files.specs(data_cfg.decontamination.evaluation_files):
    for task in sources.local_files.register(spec, data_cfg.skip_bad_records)[0]:
      sets += [(f"file:{task.name}:{split}", task, split) for split in task.splits]
  return {name: _records_digest(task.source(split)) for name, task, split in sets}


SCAN_KEYS = ("mixture", "weights", "max_examples_per_task", "example_cap", "temperature",
             "held_out_clusters", "skip_bad_records", "decontamination", "deduplication")


def data_settings(data_cfg) -> dict:
  """config.data as JSON values, local task and evaluation file specs as specs however given (a
  JSON file, inline JSON or dicts): what checksums and manifests compare."""
  data = json.loads(data_cfg.to_json_best_effort(sort_keys=True))
  specs = {"local_tasks": sources.local_files.specs(data_cfg.local_tasks),
           "evaluation_files": sources.local_files.specs(data_cfg.decontamination.evaluation_files)}
  specs = json.loads(json.dumps(specs))  # tuples (a config's own dicts) as the lists JSON reads back
  data["local_tasks"] = specs["local_tasks"]
  data["decontamination"]["evaluation_files"] = specs["evaluation_files"]
  return data


def scan_checksum(data_cfg) -> str:
  """sha256 of what resolve_mixture is a function of: the data keys it reads (local task specs as
  specs, however given), the evaluation sets, and the training records it scans (each task's
  capped rows)."""
  settings = data_settings(data_cfg)
  inputs = {key: settings[key] for key in (*SCAN_KEYS, "local_tasks")}
  inputs["evaluation"] = evaluation_checksums(data_cfg)
  limit = data_cfg.max_examples_per_task
  inputs["training"] = {t.name: _records_digest(t.source(t.splits[0]), mixture.capped(t, limit))
                        for t in split_tasks(data_cfg)[0]}
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def write_mixture(mix: Mixture, path: str):
  """Saves what resolve_mixture found (read_mixture reads it back), as one .npz file."""
  report = {"rates": mix.rates, "skipped_rows": list(mix.skipped_rows),
            "contamination": mix.contamination, "duplicates": mix.duplicates}
  kept = {f"kept/{name}": indices for name, indices in mix.kept.items()}
  with epath.Path(path).open("wb") as f:
    np.savez(f, report=json.dumps(report), **kept)


def read_mixture(data_cfg, path: str) -> Mixture:
  """The Mixture write_mixture saved, its tasks registered anew from data_cfg."""
  train, evaluation = split_tasks(data_cfg)
  with epath.Path(path).open("rb") as f:
    saved = np.load(f)
    report = json.loads(str(saved["report"]))
    kept = {t.name: saved[f"kept/{t.name}"] for t in train}
  return Mixture(train=tuple(train), evaluation=tuple(evaluation), rates=report["rates"],
                 sizes={name: len(indices) for name, indices in kept.items()}, kept=kept,
                 skipped_rows=tuple(report["skipped_rows"]), contamination=report["contamination"],
                 duplicates=report["duplicates"])


def _task_seed(seed: int, name: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def mixed_records(mix: Mixture, seed: int) -> grain.MapDataset:
  """An infinite MapDataset of (task name, index, record), tasks at their rates."""
  per_task = []
  for task in mix.train:
    records = task.source(task.splits[0])
    kept = grain.MapDataset.source(mix.kept[task.name])
    records = kept.map(functools.partial(_tag, task.name, records))
    per_task.append(records.shuffle(seed=_task_seed(seed, task.name)).repeat())
  mixed = grain.MapDataset.mix(per_task, [mix.rates[t.name] for t in mix.train])
  # Mixing interleaves in a fixed pattern; shuffling it keeps every process's
  # slice of the stream (and every batch) a fair sample of the mixture.
  return grain_experimental.WindowShuffleMapDataset(mixed, window_size=MIX_SHUFFLE_WINDOW, seed=seed % 2**32)


def _tag(name, records, index):
  return name, int(index), records[int(index)]


def examples(data_cfg, mix: Mixture, tokenizer: Tokenizer, stats: Stats, *, seed: int,
             shard_index: int = 0, shard_count: int = 1,
             reference: dict[str, np.ndarray] | None = None) -> grain.MapDataset:
  """Example features of one shard of the stream (None where a bad record was skipped). Rendering's
  RNG is seeded by the element's place in the whole stream, so an element renders the same in any
  shard, and shards do not repeat one another's template choices. Preference pairs carry their
  precomputed DPO reference sums from `reference` (dpo_reference.py) where given."""
  renderer = Renderer(data_cfg, tokenizer, mix.train, stats, kept=mix.kept, reference=reference)
  rendered = mixed_records(mix, seed).random_map(renderer, seed=seed)
  return rendered[shard_index::shard_count]


def check_seq_len(data_cfg, mix: Mixture, tokenizer: Tokenizer, *, seed: int, sample: int = 100):
  """Raises if data.seq_len is too short for every one of the first `sample` examples: a run
  that would train only on truncated examples is a configuration mistake, not data."""
  stats = Stats()
  ds = examples(data_cfg, mix, tokenizer, stats, seed=seed)
  count = sum(ds[i] is not None for i in range(sample))
  if count and stats.truncated == count:
    raise ValueError(f"data.seq_len={data_cfg.seq_len} is too short: all of the first {count} examples had to be "
                     f"truncated (data.truncation={data_cfg.truncation!r})")


def batches(data_cfg, mix: Mixture, tokenizer: Tokenizer, stats: Stats, *, seed: int,
            process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """pack_batches of the mixture's example stream (examples)."""
  stream = examples(data_cfg, mix, tokenizer, stats, seed=seed)
  return pack_batches(data_cfg, stream, stats, seed=seed, process_index=process_index,
                      process_count=process_count)


def pack_batches(data_cfg, stream: grain.MapDataset, stats: Stats, *, seed: int,
                 process_index: int = 0, process_count: int = 1,
                 pairs: bool = False) -> grain.IterDataset:
  """Packed batches of `data.batch_size / process_count` rows for this process, from an example
  stream (examples, or prepared.examples: features or None) that counts into `stats`; with `pairs`,
  a stream of preference pairs (packing.pair_features).

  The stream is cut into `data.shards` shards (element i to shard i % shards), each packed on its
  own into `batch_size / shards` rows of every batch; a process builds a contiguous block of
  shards. So the global batch is the same however many processes build it.

  With data.num_workers = 0 the batches are built in a thread, PREFETCH_BATCHES ahead; with N > 0,
  in N Grain worker processes taking turns batch by batch, each reading every N-th element of each
  shard, so which examples share a batch depends on N: a run resumes only with the N it was
  checkpointed with. Either way get_state() is the position after the batches taken, and the
  workers' counts reach `stats` with their batches. Close the iterator when done with it.
  """
  shards, batch_size = data_cfg.shards, data_cfg.batch_size
  if shards % process_count or batch_size % shards:
    raise ValueError(f"data.shards={shards} must be a multiple of the {process_count} processes and divide "
                     f"data.batch_size={batch_size}")
  per_process = shards // process_count
  streams = []
  for shard in range(process_index * per_process, (process_index + 1) * per_process):
    # Read in the calling thread: rendering holds the GIL, so reader threads only add contention.
    ds = stream[shard::shards].to_iter_dataset(grain.ReadOptions(num_threads=0))
    rows = packing.pack(ds, data_cfg.seq_len, packer=data_cfg.packer, num_bins=data_cfg.packing_bins,
                        seed=seed, pairs=pairs)
    streams.append(rows.batch(batch_size // shards, drop_remainder=True))
  zipped = grain_experimental.ZipIterDataset(streams).map(
      lambda parts: {key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
  if not data_cfg.num_workers:
    return grain_experimental.ThreadPrefetchIterDataset(zipped,
                                                        prefetch_buffer_size=PREFETCH_BATCHES)
  if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; a caller without absl.app has none
    flags.FLAGS.mark_as_parsed()
  counts = WorkerCounts(stats)
  options = grain.MultiprocessingOptions(num_workers=data_cfg.num_workers,
                                         per_worker_buffer_size=PREFETCH_BATCHES)
  built = zipped.map(counts.attach).mp_prefetch(options, worker_init_fn=_die_with_parent)
  return built.map(counts.collect)


def _die_with_parent(worker_index: int, worker_count: int):
  """A worker's start: on Linux, it is killed when the process that started it dies, even by
  SIGKILL (a preempted or killed run leaves no workers behind)."""
  del worker_index, worker_count
  if sys.platform == "linux":
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerCounts:
  """Carries what a worker process's copy of a Stats counted to the caller's Stats: in the worker,
  `attach` adds to each batch what was counted since its previous batch; in the calling process,
  `collect` takes it off the batch and adds it to `stats`."""
  KEY = "worker_counts"

  def __init__(self, stats: Stats):
    self.stats, self.sent = stats, Stats()

  def attach(self, batch: dict) -> dict:
    new = self.stats.since(self.sent)
    self.sent.add(new)
    return batch | {self.KEY: new}

  def collect(self, batch: dict) -> dict:
    self.stats.add(batch.pop(self.KEY))
    return batch


def shard_states(state: dict) -> list[dict]:
  """The position of a pack_batches iterator (its get_state()) as one dict per data shard it reads,
  which join_shard_states puts back together: a checkpoint holds it per shard, so that another
  process count can take the shards back."""
  if "parents" in state:  # data.num_workers = 0: the zip of the shards
    return state["parents"]
  workers = [worker["parents"] for worker in state["iterators_in_use_states"]]
  turn = {k: v for k, v in state.items() if k != "iterators_in_use_states"}  # whose batch is next
  return [{"workers": [shards[j] for shards in workers], **turn} for j in range(len(workers[0]))]


def join_shard_states(states: list[dict], num_workers: int) -> dict:
  """The inverse of shard_states for `num_workers` (data.num_workers); ValueError if the states
  were saved with another number."""
  saved = len(states[0].get("workers", ()))
  if saved != num_workers:
    raise ValueError(f"the data position was saved with data.num_workers={saved}, not "
                     f"{num_workers}: which examples share a batch depends on it, so a run resumes "
                     "with the number it started with")
  if not num_workers:
    return {"parents": states}
  turn = {k: v for k, v in states[0].items() if k != "workers"}
  return {**turn, "iterators_in_use_states": [{"parents": [s["workers"][w] for s in states]}
                                              for w in range(num_workers)]}


def packing_cycle(data_cfg) -> int:
  """Batches per packing cycle: every shard's packer fills all its bins at once and hands their
  rows out over this many batches, so the pipeline's cost comes in one burst per cycle. Any run of
  this many consecutive batches holds one burst: time whole cycles."""
  return max(1, data_cfg.packing_bins * data_cfg.shards // data_cfg.batch_size)
