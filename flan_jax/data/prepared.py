"""Prepared data: a mixture's training stream resolved, rendered and tokenized once
(`python -m flan_jax.data prepare`) into ArrayRecord shards that every process of a run reads.

A directory (local, or any path etils.epath writes: `gs://...`) holds
  plan.json                               what is being prepared; written first, so that a rerun
                                          with another config is refused and a killed one resumes
  examples-SSSSS-of-NNNNN.array_record   EXAMPLES_PER_SHARD examples each, in stream order; a shard
                                          appears (renamed into place) only once complete
  examples-SSSSS-of-NNNNN.json            that shard's counts (tasks, truncated, skipped, drawn)
  tokenizer/                              the trained tokenizer, where data.tokenizer.model is empty
  manifest.json                           written last: the plan, what the mixture kept and dropped
                                          and why, and the counts of all shards

Element i of the prepared examples is element i of the streaming path's example stream
(pipeline.examples, same config and seed): the same task, record, template draws and tokens. There
are as many as the mixture keeps (one pass's worth: the sum of Mixture.sizes); a run that reads
further starts over at element 0 and sees each rendering again, where the streaming path would have
drawn new ones.

A record is 1 byte of flags (TRUNCATED, SKIPPED), n int32 tokens (little-endian), n uint8 loss
weights; a skipped bad record (data.skip_bad_records) is the flags alone.
"""

import collections
import json
import math
import multiprocessing
import resource
import time

import grain
import jax
import numpy as np
from array_record.python import array_record_module
from etils import epath

from flan_jax.data import packing, pipeline, vocab
from flan_jax.data import tokenizer as tokenizer_lib
from flan_jax.data.render import Stats
from flan_jax.data.tokenizer import Tokenizer

EXAMPLES_PER_SHARD = 10_000
TRUNCATED, SKIPPED = 1, 2
PLAN, MANIFEST = "plan.json", "manifest.json"
# data.* keys that decide how prepared examples are batched, not what they are.
BATCHING_KEYS = ("batch_size", "rows_per_shard", "shards", "packer", "packing_bins", "prepared",
                 "num_workers")


def identity(config) -> dict:
  """What the prepared examples are a function of: config.data but its batching keys (local task
  specs as specs, however given), and the seed."""
  data = pipeline.data_settings(config.data)
  return {"data": {k: v for k, v in data.items() if k not in BATCHING_KEYS}, "seed": config.seed}


def shard_name(shard: int, shards: int) -> str:
  return f"examples-{shard:05d}-of-{shards:05d}.array_record"


def encode(features: dict | None, truncated: bool) -> bytes:
  """An example's record (see the module docstring); None is a skipped bad record."""
  if features is None:
    return bytes([SKIPPED])
  tokens = np.concatenate([features["inputs"][:1], features["targets"]]).astype("<i4")
  weights = np.concatenate([[0], features["loss_weights"]]).astype(np.uint8)
  return bytes([TRUNCATED if truncated else 0]) + tokens.tobytes() + weights.tobytes()


class Decode:
  """record -> example features (packing.example_features) or None, counting into `stats` what the
  streaming path's renderer would have counted: truncated examples and skipped records."""

  def __init__(self, stats: Stats):
    self.stats = stats

  def __call__(self, record: bytes) -> dict | None:
    if record[0] & SKIPPED:
      self.stats.skip("prepared",
                      "a bad record skipped when the data was prepared (see its manifest)")
      return None
    self.stats.truncated += bool(record[0] & TRUNCATED)
    n = (len(record) - 1) // 5
    tokens = np.frombuffer(record, "<i4", count=n, offset=1).astype(np.int32)
    weights = np.frombuffer(record, np.uint8, count=n, offset=1 + 4 * n).astype(np.int32)
    return packing.example_features(tokens, weights)


def _processes() -> tuple[int, int]:
  """(index, count) of this process under the multi-process runtime; (0, 1) without one, never
  starting a backend (workers are forked after this)."""
  if jax.distributed.is_initialized():
    return jax.process_index(), jax.process_count()
  return 0, 1


def _write_json(path: epath.Path, value):
  path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")


_JOB = {}  # what forked workers inherit: see prepare()


def _write_shard(shard: int) -> int:
  """Renders and writes one shard (examples shard * EXAMPLES_PER_SHARD onwards) with its counts;
  returns the shard. The shard is written aside and renamed into place when complete."""
  job = _JOB
  out, count, shards = job["out"], job["count"], job["shards"]
  stats = Stats()
  stream = pipeline.examples(job["data_cfg"], job["mix"], job["tokenizer"], stats, seed=job["seed"])
  records = pipeline.mixed_records(job["mix"], job["seed"])
  tasks = collections.Counter()
  final = out / shard_name(shard, shards)
  partial = out / (final.name + ".partial")
  writer = array_record_module.ArrayRecordWriter(str(partial), "group_size:1")
  for i in range(shard * EXAMPLES_PER_SHARD, min(count, (shard + 1) * EXAMPLES_PER_SHARD)):
    truncated = stats.truncated
    features = stream[i]
    tasks[records[i][0]] += features is not None
    writer.write(encode(features, stats.truncated > truncated))
  writer.close()
  _write_json(
      out / final.name.replace(".array_record", ".json"), {
          "tasks": dict(tasks),
          "truncated": stats.truncated,
          "skipped": dict(stats.skipped),
          "skip_messages": stats.skip_messages[:20],
          "renderings": dict(stats.renderings)
      })
  partial.rename(final)
  return shard


def prepare(config, out_dir: str, num_workers: int = 0, log=print) -> dict:
  """Prepares config's training stream into `out_dir` (see the module docstring); returns the
  manifest. Shards already complete are kept (a killed run resumes); under the multi-process
  runtime each process writes the shards s with s % process_count == its index. `num_workers` > 0
  renders shards in that many forked processes."""
  data_cfg, out = config.data, epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  mix = pipeline.resolve_mixture(data_cfg)
  scan_seconds = time.perf_counter() - start
  tokenizer = vocab.get_tokenizer(data_cfg, str(out / "tokenizer"))
  pipeline.check_seq_len(data_cfg, mix, tokenizer, seed=config.seed)
  count = sum(mix.sizes.values())
  shards = math.ceil(count / EXAMPLES_PER_SHARD)
  plan = {
      "identity": identity(config),
      "tokenizer_sha256": tokenizer_lib.checksum(tokenizer),
      "evaluation_sha256": pipeline.evaluation_checksums(data_cfg),
      "examples": count,
      "shards": shards
  }
  process_index, process_count = _processes()
  if (out / PLAN).exists():
    recorded = json.loads((out / PLAN).read_text())
    if recorded != plan:
      raise ValueError(f"{out / PLAN}: {out_dir} holds a preparation of another config: " +
                       "; ".join(differences(recorded, plan)) + ". Use an empty directory")
  elif process_index == 0:
    _write_json(out / PLAN, plan)
  todo = [
      s for s in range(process_index, shards, process_count)
      if not (out / shard_name(s, shards)).exists()
  ]
  log(f"{count} examples in {shards} shards ({len(todo)} to write here) after {scan_seconds:.1f} s "
      f"resolving the mixture")
  render_start = time.perf_counter()
  _JOB.update(out=out, count=count, shards=shards, data_cfg=data_cfg, mix=mix, tokenizer=tokenizer,
              seed=config.seed)
  if num_workers:
    with multiprocessing.get_context("fork").Pool(num_workers) as pool:
      for done, shard in enumerate(pool.imap_unordered(_write_shard, todo), 1):
        log(f"shard {shard} written ({done}/{len(todo)}, {time.perf_counter() - start:.0f} s)")
  else:
    for done, shard in enumerate(todo, 1):
      _write_shard(shard)
      log(f"shard {shard} written ({done}/{len(todo)}, {time.perf_counter() - start:.0f} s)")
  _JOB.clear()
  if process_count > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415 -- only under the runtime
    multihost_utils.sync_global_devices("prepared shards written")
  if process_index:
    return {}
  peak = max(_own_peak_rss_kb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
  manifest = {
      **plan,
      **_counts(out, shards), "scan_seconds": scan_seconds,
      "render_seconds": time.perf_counter() - render_start,
      "peak_rss_gb": peak / 2**20,
      "mixture": {
          "rates": mix.rates,
          "kept": mix.sizes,
          "skipped_rows": list(mix.skipped_rows[:20]),
          "skipped_row_count": len(mix.skipped_rows),
          "contamination": mix.contamination,
          "duplicates": mix.duplicates
      }
  }
  _write_json(out / MANIFEST, manifest)
  return manifest


def _own_peak_rss_kb() -> int:
  """This process's peak resident set in KiB since its last exec (Linux's VmHWM).

  `getrusage(RUSAGE_SELF)` would also count the process that forked and exec'd this one (a
  bench generating two million records, say), which Linux carries across exec.
  """
  try:
    with open("/proc/self/status") as status:
      return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
  except (FileNotFoundError, StopIteration):  # not Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _counts(out: epath.Path, shards: int) -> dict:
  """The shards' counts summed, and each shard's record count."""
  tasks, skipped, renderings, truncated, messages = (collections.Counter(), collections.Counter(),
                                                     collections.Counter(), 0, [])
  for shard in range(shards):
    counts = json.loads(
        (out / shard_name(shard, shards).replace(".array_record", ".json")).read_text())
    tasks.update(counts["tasks"])
    skipped.update(counts["skipped"])
    renderings.update(counts["renderings"])
    truncated += counts["truncated"]
    messages += counts["skip_messages"][:20 - len(messages)]
  return {
      "tasks": dict(tasks),
      "truncated": truncated,
      "skipped": dict(skipped),
      "skip_messages": messages,
      "renderings": dict(renderings)
  }


def differences(prepared: dict, run: dict, where: str = "") -> list[str]:
  """`key: prepared X, this run Y` for every leaf that differs between two nested dicts."""
  out = []
  for key in sorted(set(prepared) | set(run), key=str):
    a, b, name = prepared.get(key), run.get(key), f"{where}{key}"
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f"{name}.")
    elif a != b:
      out.append(f"{name}: prepared {json.dumps(a)}, this run {json.dumps(b)}")
  return out


def tokenizer_dir(directory: str) -> str:
  """Where prepare keeps the tokenizer it trained (data.tokenizer.model empty)."""
  return str(epath.Path(directory) / "tokenizer")


def read_manifest(directory: str) -> dict:
  path = epath.Path(directory) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(
        f"data.prepared={directory}: no {MANIFEST} (not prepared, or its preparation did "
        "not finish: run `python -m flan_jax.data prepare` to complete it)")
  return json.loads(path.read_text())


def check(manifest: dict, directory: str, config, tokenizer: Tokenizer):
  """Raises, naming every difference, unless the run's data config, seed, tokenizer and evaluation
  sets are those the directory was prepared with."""
  found = differences(manifest["identity"], identity(config))
  if manifest["tokenizer_sha256"] != tokenizer_lib.checksum(tokenizer):
    found.append(f"tokenizer sha256: prepared {manifest['tokenizer_sha256']}, this run "
                 f"{tokenizer_lib.checksum(tokenizer)} ({tokenizer.path})")
  found += [
      f"evaluation set {d}" for d in differences(manifest["evaluation_sha256"],
                                                 pipeline.evaluation_checksums(config.data))
  ]
  if found:
    raise ValueError(f"data.prepared={directory} does not match this run: " + "; ".join(found))


def examples(directory: str, manifest: dict, stats: Stats) -> grain.MapDataset:
  """The prepared example stream, repeated forever: element i is the streaming path's element i
  (for i below the prepared count). Every shard must be there, whole."""
  paths, shards = [], manifest["shards"]
  for shard in range(shards):
    path = epath.Path(directory) / shard_name(shard, shards)
    expected = min(EXAMPLES_PER_SHARD, manifest["examples"] - shard * EXAMPLES_PER_SHARD)
    try:
      reader = array_record_module.ArrayRecordReader(str(path))
      records = reader.num_records()
      reader.close()
    except Exception as error:  # noqa: BLE001 -- the reader raises bare RuntimeErrors and OSErrors
      raise ValueError(f"data.prepared: shard {path} cannot be read ({error})") from None
    if records != expected:
      raise ValueError(f"data.prepared: shard {path} holds {records} examples, not {expected}")
    paths.append(str(path))
  source = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths))
  return source.map(Decode(stats)).repeat()
