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

from flan_jax.data import decontamination, deduplication, flan_mini, local_files, mixture, packing, tasks, templates, tfds_tasks
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
  renderings: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # see Renderer
  mixture_skipped: int = 0  # local-file rows resolving the mixture skipped (Mixture.skipped_rows)

  def counts(self) -> dict[str, int]:
    """What the logs report: records skipped (the mixture's and the pipeline's) and examples truncated."""
    return {"skipped_records": self.mixture_skipped + sum(self.skipped.values()), "truncated": self.truncated}

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
  duplicates: dict = dataclasses.field(default_factory=dict)  # deduplication.Duplicates.report()
  # task -> training indices dropped (contaminating or duplicate)
  dropped: dict[str, frozenset[int]] = dataclasses.field(default_factory=dict)


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
  dedup = data_cfg.deduplication
  duplicates = deduplication.find(train, dedup.mode, dedup.ngram, dedup.threshold, skip=dropped)
  duplicate_report = duplicates.report(sizes)
  for name, indices in duplicates.dropped.items():
    dropped[name] = dropped.get(name, frozenset()) | indices
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
                 contamination=contamination, duplicates=duplicate_report, dropped=dropped)


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
    try:
      registered = local_files.register(spec, data_cfg.skip_bad_records)[0]
    except (OSError, ValueError, KeyError) as e:  # BadRecordError is a ValueError
      raise type(e)(f"data.decontamination.evaluation_files: {e}") from None
    for task in registered:
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


PROMPT_SETTINGS = ("zero_shot", "few_shot", "chain_of_thought")


def conversation(task: tasks.Task, fields: dict, template: templates.Template, template_cfg, *,
                 chain_of_thought: bool = False, exemplars: Sequence[dict] = (),
                 count_tokens=None) -> list[tuple[str, str]]:
  """One example through one template as [(role, text)]; few-shot exemplars share the template."""
  if task.conversational:
    return list(fields["messages"])
  where = f"task {task.name}, template " + (str(task.templates.index(template)) if template in task.templates
                                            else repr(template.prompt))

  def pair(f):
    options = task.example_options(f) if task.is_classification else None
    return templates.render_pair(template, f, options=options, show_options=template_cfg.options,
                                 chain_of_thought=chain_of_thought, where=where)

  prompt, response = pair(fields)
  if exemplars:
    prompt = templates.few_shot_prompt(prompt, [pair(e) for e in exemplars],
                                       max_tokens=template_cfg.few_shot_max_tokens, count_tokens=count_tokens)
  return [("user", prompt), ("assistant", response)]


def _draw(rng: np.random.Generator, weights: dict[str, float]) -> str:
  """A name drawn by weight; a lone name is drawn without touching the RNG."""
  names = list(weights)
  if len(names) == 1:
    return names[0]
  p = np.asarray([weights[n] for n in names], np.float64)
  return names[int(rng.choice(len(names), p=p / p.sum()))]


def check_template_config(template_cfg):
  """Raises, naming the key, for mixes that cannot be drawn from."""
  templates.styled((templates.Template("{x}"),), template_cfg.style, "")  # checks the style
  prompt_mix = dict(template_cfg.prompt_mix)
  unknown = set(prompt_mix) - set(PROMPT_SETTINGS)
  if unknown or any(w < 0 for w in prompt_mix.values()) or not sum(prompt_mix.values()) > 0:
    raise ValueError(f"data.template.prompt_mix={prompt_mix}: weights (>= 0, not all 0) of {PROMPT_SETTINGS}")
  if prompt_mix.get("few_shot", 0) > 0 and template_cfg.num_shots < 1:
    raise ValueError("data.template.prompt_mix.few_shot > 0 needs data.template.num_shots >= 1")
  format_mix = dict(template_cfg.format_mix)
  for fmt in format_mix:
    if fmt not in templates.FORMATS and fmt != templates.CHAT_TEMPLATE:
      raise ValueError(f"data.template.format_mix: unknown format {fmt!r}; formats are {sorted(templates.FORMATS)} "
                       f"or {templates.CHAT_TEMPLATE!r}")
  if format_mix and (any(w < 0 for w in format_mix.values()) or not sum(format_mix.values()) > 0):
    raise ValueError(f"data.template.format_mix={format_mix}: weights must be >= 0 and not all 0")
  for key in ("preamble_rate", "omit_input_rate"):
    if not 0 <= template_cfg[key] <= 1:
      raise ValueError(f"data.template.{key}={template_cfg[key]} is not in [0, 1]")
  if template_cfg.preamble_rate > 0 and not template_cfg.preambles:
    raise ValueError("data.template.preamble_rate > 0 needs data.template.preambles")


class Renderer:
  """Record -> example features: template, prompt setting, preamble, output format, tokens, truncation.

  Called by Grain's `random_map` with an RNG seeded by the element's index, so
  the same element always renders the same way. Every training example draws, by the
  data.template weights: a template; zero-shot, few-shot or chain-of-thought (a task without
  rationales renders zero-shot); a preamble (a system turn) or none; whether an input turn joins
  the instruction; and its output format. `stats.renderings` counts what was drawn.
  """

  def __init__(self, data_cfg, tokenizer: Tokenizer | None, train_tasks: Sequence[tasks.Task], stats: Stats):
    check_template_config(data_cfg.template)
    self.cfg, self.tokenizer, self.stats = data_cfg, tokenizer, stats
    self.tasks = {t.name: t for t in train_tasks}
    template_cfg = data_cfg.template
    self.templates = {t.name: templates.select_templates(
        templates.styled(t.templates, template_cfg.style, t.name) if t.templates else (),
        inverted=template_cfg.inverted, max_templates=template_cfg.max_templates) for t in train_tasks}
    self.prompt_mix = {k: v for k, v in dict(template_cfg.prompt_mix).items() if v > 0}
    self.format_mix = dict(template_cfg.format_mix) or {template_cfg.format: 1.0}

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

  def render(self, element, rng: np.random.Generator) -> tuple[list[tuple[str, str]], str] | None:
    """(conversation, output format) of one (task name, index, record), or None for a skipped record."""
    task_name, index, record = element
    task = self.tasks[task_name]
    fields = self.fields(task, record)
    if fields is None:
      return None
    template_cfg, counts = self.cfg.template, self.stats.renderings
    if task.conversational:
      turns, setting = conversation(task, fields, None, template_cfg), "conversation"
    else:
      template = self.templates[task_name][int(rng.integers(len(self.templates[task_name])))]
      setting = _draw(rng, self.prompt_mix)
      if setting == "chain_of_thought" and not fields.get("rationale"):
        setting = "zero_shot"
      exemplars = []
      if setting == "few_shot":
        records = self._train_records[task_name]
        candidates = [int(i) for i in rng.choice(len(records), size=min(template_cfg.num_shots + 1, len(records)),
                                                 replace=False) if i != index][:template_cfg.num_shots]
        exemplars = [f for f in (self.fields(task, records[i]) for i in candidates) if f is not None]
      turns = conversation(task, fields, template, template_cfg, chain_of_thought=setting == "chain_of_thought",
                           exemplars=exemplars, count_tokens=lambda text: len(self.tokenizer.encode(text)))
    counts[f"prompt:{setting}"] += 1
    if template_cfg.preamble_rate and rng.random() < template_cfg.preamble_rate:
      turns = [("system", template_cfg.preambles[int(rng.integers(len(template_cfg.preambles)))]), *turns]
      counts["preamble"] += 1
    if any(role == "input" for role, _ in turns):
      counts["input_turn"] += 1
      if template_cfg.omit_input_rate and rng.random() < template_cfg.omit_input_rate:
        turns = templates.join_input_turns(turns)
        counts["input_joined"] += 1
    fmt = _draw(rng, self.format_mix)
    counts[f"format:{fmt}"] += 1
    return turns, fmt

  def __call__(self, element, rng: np.random.Generator) -> dict | None:
    rendered = self.render(element, rng)
    if rendered is None:
      return None
    tokens, weights = self.tokenizer.encode_conversation(*rendered)
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


def tokenizer_tasks(data_cfg) -> list[tasks.Task]:
  """The tasks whose training splits train the tokenizer: data.tokenizer.mixture (empty: the run's
  mixture and local tasks) less data.tokenizer.held_out_clusters and the clusters FLAN excludes with
  them. Neither depends on a run's own choices unless set to, so one sweep can share one tokenizer."""
  cfg = data_cfg.tokenizer
  run_names = task_names(data_cfg)[0]  # also registers the local tasks data.tokenizer.mixture may name
  names = list(cfg.mixture) or run_names
  held_out = data_cfg.held_out_clusters if cfg.held_out_clusters is None else cfg.held_out_clusters
  excluded = tasks.excluded_clusters(list(held_out))
  chosen = [t for t in mixture.leaf_tasks(names) if t.cluster not in excluded]
  if not chosen:
    raise ValueError(f"data.tokenizer.held_out_clusters={tuple(held_out)} leaves no task of {names} "
                     "to train the tokenizer on")
  return chosen


def tokenizer_spec(data_cfg) -> dict:
  """What a trained tokenizer is a function of (its cache key)."""
  cfg = data_cfg.tokenizer
  return {"tasks": [t.name for t in tokenizer_tasks(data_cfg)], "vocab_size": cfg.vocab_size,
          "num_texts": cfg.num_texts, "formats": sorted(dict(data_cfg.template.format_mix) or [data_cfg.template.format]),
          "version": 2}


def tokenizer_texts(data_cfg, corpus: Sequence[tasks.Task], count: int) -> list[str]:
  """Training-split text of the corpus tasks through all their instruction templates, zero-shot, in
  the run's output formats: the same whatever a sweep varies of the templates."""
  cfg = copy.deepcopy(data_cfg)
  cfg.template.update(dict(style="instructions", max_templates=0, inverted=True, preamble_rate=0.0,
                           omit_input_rate=0.0))
  cfg.template.prompt_mix = {"zero_shot": 1.0}  # (update() would merge into the run's mix)
  renderer = Renderer(cfg, None, corpus, Stats())
  rng = np.random.default_rng(0)
  texts = []
  for task in corpus:
    records = task.source(task.splits[0])
    for i in rng.choice(len(records), size=min(max(1, count // len(corpus)), len(records)), replace=False):
      rendered = renderer.render((task.name, int(i), records[int(i)]), rng)
      if rendered is not None:
        texts.append(templates.to_text(*rendered, eos=""))
  return texts


def get_tokenizer(data_cfg, cache_dir: str) -> Tokenizer:
  """The configured tokenizer file, or one trained on tokenizer_tasks() and cached in `cache_dir`."""
  cfg = data_cfg.tokenizer
  if cfg.model:
    return tokenizer_lib.load(cfg.model, pad_id=cfg.pad_id, eos_id=cfg.eos_id, bos_id=cfg.bos_id)
  spec = tokenizer_spec(data_cfg)
  path = tokenizer_lib.cache_path(cache_dir, spec)
  try:
    return tokenizer_lib.load(path)
  except FileNotFoundError:
    corpus = tokenizer_tasks(data_cfg)
    return tokenizer_lib.train(tokenizer_texts(data_cfg, corpus, cfg.num_texts), path, vocab_size=cfg.vocab_size)
