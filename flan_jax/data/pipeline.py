"""The input pipeline: sources -> mix -> template -> tokenize -> pack -> batch, on Grain.

Everything is a pure function of (config, seed, process index): every task's
records are shuffled and repeated forever, mixed at their rates, sharded by
process, rendered through a template chosen by a per-element RNG, tokenized,
truncated, packed and batched. The iterator's `get_state()` is a small dict;
`set_state()` on a fresh iterator resumes exactly where it was taken.
"""

import collections
import copy
import dataclasses
import functools
import zlib
from collections.abc import Sequence

import grain
import numpy as np
from grain import experimental as grain_experimental

from flan_jax.data import decontamination, flan_mini, local_files, mixture, packing, tasks, templates, tfds_tasks
from flan_jax.data.tokenizer import Tokenizer
from flan_jax.data import tokenizer as tokenizer_lib

del flan_mini, tfds_tasks  # imported for their task and mixture registrations

MIX_SHUFFLE_WINDOW = 10_000
PREFETCH_BATCHES = 2


@dataclasses.dataclass
class Stats:
  """Process-local counts of records the pipeline skipped and examples it truncated."""
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skip_messages: list = dataclasses.field(default_factory=list)
  truncated: int = 0

  def skip(self, task: str, message: str):
    self.skipped[task] += 1
    if len(self.skip_messages) < 100:
      self.skip_messages.append(message)


@dataclasses.dataclass(frozen=True)
class Mixture:
  train: tuple[tasks.Task, ...]
  evaluation: tuple[tasks.Task, ...]  # zero-shot tasks of the held-out clusters
  rates: dict[str, float]  # normalised sampling rate of each training task
  sizes: dict[str, int]  # training examples available per task (after decontamination drops)
  skipped_rows: tuple[str, ...]  # local-file rows skipped under skip_bad_records
  contamination: dict | None = None  # decontamination.Found.report(), unless data.decontamination.mode is off
  dropped: dict[str, frozenset[int]] = dataclasses.field(default_factory=dict)  # task -> training indices dropped


def task_names(data_cfg) -> tuple[list[str], list[str]]:
  """(the mixture and task names of data.mixture and data.local_tasks, the local rows skipped under
  skip_bad_records); registers the local tasks."""
  names, skipped_rows = list(data_cfg.mixture), []
  for spec in local_files.specs(data_cfg.local_tasks):
    registered, skipped = local_files.register(spec, data_cfg.skip_bad_records)
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
  names, skipped_rows = task_names(data_cfg)
  train, evaluation = mixture.split_by_held_out(names, list(data_cfg.held_out_clusters))
  sizes = {t.name: len(t.source(t.splits[0])) for t in mixture.leaf_tasks(names)}
  contamination, dropped = decontaminate(data_cfg, train, evaluation, sizes)
  sizes.update({name: sizes[name] - len(indices) for name, indices in dropped.items()})
  empty = [n for n, s in sizes.items() if s == 0 and n in {t.name for t in train}]
  if empty:
    raise ValueError(f"training task(s) {empty} have no training examples")
  all_rates = mixture.rates(names, sizes=sizes, cap=data_cfg.example_cap, temperature=data_cfg.temperature,
                            weights=dict(data_cfg.weights))
  total = sum(all_rates[t.name] for t in train)
  return Mixture(train=tuple(train), evaluation=tuple(evaluation),
                 rates={t.name: all_rates[t.name] / total for t in train},
                 sizes={t.name: sizes[t.name] for t in train}, skipped_rows=tuple(skipped_rows),
                 contamination=contamination, dropped=dropped)


DECONTAMINATION_MODES = ("off", "report", "drop")


def decontaminate(data_cfg, train, evaluation, sizes) -> tuple[dict | None, dict[str, frozenset[int]]]:
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
  for spec in local_files.specs(cfg.evaluation_files):
    for task in local_files.register(spec, data_cfg.skip_bad_records)[0]:
      sets += [(f"file:{task.name}:{split}", task, split) for split in task.splits if len(task.source(split))]
  found = decontamination.find(tuple(train), tuple(sets), cfg.ngram, cfg.threshold)
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


def conversation(task: tasks.Task, fields: dict, template: templates.Template, template_cfg, *,
                 exemplars: Sequence[dict] = (), count_tokens=None) -> list[tuple[str, str]]:
  """One example through one template as [(role, text)]; few-shot exemplars share the template."""
  if task.conversational:
    return list(fields["messages"])
  where = f"task {task.name}, template {task.templates.index(template)}"

  def pair(f):
    options = task.example_options(f) if task.is_classification else None
    return templates.render_pair(template, f, options=options, show_options=template_cfg.options,
                                 chain_of_thought=template_cfg.chain_of_thought, where=where)

  prompt, response = pair(fields)
  if exemplars:
    prompt = templates.few_shot_prompt(prompt, [pair(e) for e in exemplars],
                                       max_tokens=template_cfg.few_shot_max_tokens, count_tokens=count_tokens)
  return [("user", prompt), ("assistant", response)]


class Renderer:
  """Record -> example features: template, few-shot exemplars, tokens, truncation.

  Called by Grain's `random_map` with an RNG seeded by the element's index, so
  the same element always renders the same way.
  """

  def __init__(self, data_cfg, tokenizer: Tokenizer | None, train_tasks: Sequence[tasks.Task], stats: Stats):
    self.cfg, self.tokenizer, self.stats = data_cfg, tokenizer, stats
    self.tasks = {t.name: t for t in train_tasks}
    self.templates = {t.name: templates.select_templates(t.templates, inverted=data_cfg.template.inverted,
                                                         max_templates=data_cfg.template.max_templates)
                      for t in train_tasks}

  @functools.cached_property
  def _train_records(self):
    return {name: t.source(t.splits[0]) for name, t in self.tasks.items()}

  def fields(self, task: tasks.Task, record) -> dict | None:
    try:
      return task.example_fields(record)
    except tasks.BadRecordError as e:
      if not (self.cfg.skip_bad_records or isinstance(e, tasks.UnlabeledRecordError)):
        raise
      self.stats.skip(task.name, str(e))
      return None

  def render(self, element, rng: np.random.Generator) -> list[tuple[str, str]] | None:
    task_name, index, record = element
    task = self.tasks[task_name]
    fields = self.fields(task, record)
    if fields is None:
      return None
    if task.conversational:
      return conversation(task, fields, None, self.cfg.template)
    template = self.templates[task_name][int(rng.integers(len(self.templates[task_name])))]
    exemplars = []
    if self.cfg.template.num_shots:
      records = self._train_records[task_name]
      candidates = [int(i) for i in rng.choice(len(records), size=self.cfg.template.num_shots + 1, replace=False)
                    if i != index][:self.cfg.template.num_shots]
      exemplars = [f for f in (self.fields(task, records[i]) for i in candidates) if f is not None]
    return conversation(task, fields, template, self.cfg.template, exemplars=exemplars,
                        count_tokens=lambda text: len(self.tokenizer.encode(text)))

  def __call__(self, element, rng: np.random.Generator) -> dict | None:
    turns = self.render(element, rng)
    if turns is None:
      return None
    tokens, weights = self.tokenizer.encode_conversation(turns, self.cfg.template.format)
    tokens, weights, truncated = packing.truncate(tokens, weights, self.cfg.seq_len + 1, self.cfg.truncation)
    self.stats.truncated += truncated
    return packing.example_features(tokens, weights)


def _task_seed(seed: int, name: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def mixed_records(mix: Mixture, seed: int) -> grain.MapDataset:
  """An infinite MapDataset of (task name, index, record), tasks at their rates."""
  per_task = []
  for task in mix.train:
    records = task.source(task.splits[0])
    kept = [i for i in range(len(records)) if i not in mix.dropped.get(task.name, ())]
    records = grain.MapDataset.source(kept).map(functools.partial(_tag, task.name, records))
    per_task.append(records.shuffle(seed=_task_seed(seed, task.name)).repeat())
  mixed = grain.MapDataset.mix(per_task, [mix.rates[t.name] for t in mix.train])
  # Mixing interleaves in a fixed pattern; shuffling it keeps every process's
  # slice of the stream (and every batch) a fair sample of the mixture.
  return grain_experimental.WindowShuffleMapDataset(mixed, window_size=MIX_SHUFFLE_WINDOW, seed=seed % 2**32)


def _tag(name, records, index):
  return name, index, records[index]


def examples(data_cfg, mix: Mixture, tokenizer: Tokenizer, stats: Stats, *, seed: int,
             shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
  """Example features of one shard of the stream (None where a bad record was skipped). Rendering's
  RNG is seeded by the element's place in the whole stream, so an element renders the same in any
  shard, and shards do not repeat one another's template choices."""
  rendered = mixed_records(mix, seed).random_map(Renderer(data_cfg, tokenizer, mix.train, stats), seed=seed)
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
  """Packed batches of `data.batch_size / process_count` rows for this process.

  The example stream is cut into `data.shards` shards, each packed on its own into
  `batch_size / shards` rows of every batch; a process builds a contiguous block of
  shards. So the global batch is the same however many processes build it.
  """
  shards, batch_size = data_cfg.shards, data_cfg.batch_size
  if shards % process_count or batch_size % shards:
    raise ValueError(f"data.shards={shards} must be a multiple of the {process_count} processes and divide "
                     f"data.batch_size={batch_size}")
  per_process = shards // process_count
  streams = []
  for shard in range(process_index * per_process, (process_index + 1) * per_process):
    # Read in the calling thread: rendering holds the GIL, so reader threads only add contention.
    ds = examples(data_cfg, mix, tokenizer, stats, seed=seed, shard_index=shard,
                  shard_count=shards).to_iter_dataset(grain.ReadOptions(num_threads=0))
    rows = packing.pack(ds, data_cfg.seq_len, packer=data_cfg.packer, num_bins=data_cfg.packing_bins, seed=seed)
    streams.append(rows.batch(batch_size // shards, drop_remainder=True))
  zipped = grain_experimental.ZipIterDataset(streams).map(
      lambda parts: {key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
  # Built in a thread, PREFETCH_BATCHES ahead of the train step; its get_state() is the position
  # after the batches taken, not the ones built. Close the iterator when done with it.
  return grain_experimental.ThreadPrefetchIterDataset(zipped, prefetch_buffer_size=PREFETCH_BATCHES)


def packing_cycle(data_cfg) -> int:
  """Batches per packing cycle: every shard's packer fills all its bins at once and hands their
  rows out over this many batches, so the pipeline's cost comes in one burst per cycle. Any run of
  this many consecutive batches holds one burst: time whole cycles."""
  return max(1, data_cfg.packing_bins * data_cfg.shards // data_cfg.batch_size)


def tokenizer_texts(data_cfg, names: Sequence[str], count: int) -> list[str]:
  """Rendered text from every task of the mixture (held-out clusters too, as a
  pretrained tokenizer would have seen them), so one tokenizer serves every
  held-out split of a sweep."""
  cfg = copy.deepcopy(data_cfg)
  cfg.template.num_shots = 0  # few-shot budgets are counted in tokens, and there is no tokenizer yet
  all_tasks = mixture.leaf_tasks(names)
  renderer = Renderer(cfg, None, all_tasks, Stats())
  rng = np.random.default_rng(0)
  texts = []
  for task in all_tasks:
    records = task.source(task.splits[0])
    for i in rng.choice(len(records), size=min(max(1, count // len(all_tasks)), len(records)), replace=False):
      turns = renderer.render((task.name, int(i), records[int(i)]), rng)
      if turns is not None:
        texts.append(templates.to_text(turns, cfg.template.format, eos=""))
  return texts


def get_tokenizer(data_cfg, cache_dir: str) -> Tokenizer:
  """The configured `.model` file, or one trained on the mixture and cached in `cache_dir`."""
  cfg = data_cfg.tokenizer
  if cfg.model:
    return tokenizer_lib.load(cfg.model, pad_id=cfg.pad_id, eos_id=cfg.eos_id, bos_id=cfg.bos_id)
  names = task_names(data_cfg)[0]
  spec = {"mixture": names, "vocab_size": cfg.vocab_size, "num_texts": cfg.num_texts,
          "format": data_cfg.template.format, "version": 1}
  path = tokenizer_lib.cache_path(cache_dir, spec)
  try:
    return tokenizer_lib.load(path)
  except FileNotFoundError:
    return tokenizer_lib.train(tokenizer_texts(data_cfg, names, cfg.num_texts), path, vocab_size=cfg.vocab_size)
