"""Rendering: a task's record -> a conversation [(role, text)] through one of its templates, in a
prompt setting (zero-shot, few-shot, chain-of-thought), with or without a preamble, in an output
format, then tokens. `Renderer` is the pipeline's per-example stage; `conversation` is what
evaluation renders held-out examples with; `Stats` counts what rendering skipped, truncated and
drew.
"""

import collections
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from flan_jax.data import packing, tasks, templates
from flan_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass
class Stats:
  """Process-local counts of records the pipeline skipped and examples it truncated."""
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skip_messages: list = dataclasses.field(default_factory=list)
  truncated: int = 0
  renderings: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)  # see Renderer
  mixture_skipped: int = 0  # local-file rows resolving the mixture skipped (Mixture.skipped_rows)

  def counts(self) -> dict[str, int]:
    """What the logs report: records skipped (the mixture's and the pipeline's) and examples
    truncated."""
    return {
        "skipped_records": self.mixture_skipped + sum(self.skipped.values()),
        "truncated": self.truncated
    }

  def skip(self, task: str, message: str):
    self.skipped[task] += 1
    if len(self.skip_messages) < 100:
      self.skip_messages.append(message)

  def since(self, earlier: "Stats") -> "Stats":
    """What was counted after `earlier`, a copy of these counts taken before (mixture_skipped, set
    once, is not counted)."""
    return Stats(skipped=self.skipped - earlier.skipped,
                 skip_messages=self.skip_messages[len(earlier.skip_messages):],
                 truncated=self.truncated - earlier.truncated,
                 renderings=self.renderings - earlier.renderings)

  def add(self, counts: "Stats"):
    """Adds `counts` (Stats.since in another process) to these."""
    self.skipped.update(counts.skipped)
    self.skip_messages.extend(counts.skip_messages[:100 - len(self.skip_messages)])
    self.truncated += counts.truncated
    self.renderings.update(counts.renderings)


PROMPT_SETTINGS = ("zero_shot", "few_shot", "chain_of_thought")


def conversation(task: tasks.Task, fields: dict, template: templates.Template, template_cfg, *,
                 chain_of_thought: bool = False, exemplars: Sequence[dict] = (),
                 count_tokens=None) -> list[tuple[str, str]]:
  """One example through one template as [(role, text)]; few-shot exemplars share the template."""
  if task.conversational:
    return list(fields["messages"])
  where = f"task {task.name}, template " + (str(task.templates.index(template)) if template
                                            in task.templates else repr(template.prompt))

  def pair(f):
    options = task.example_options(f) if task.is_classification else None
    return templates.render_pair(template, f, options=options, show_options=template_cfg.options,
                                 chain_of_thought=chain_of_thought, where=where)

  prompt, response = pair(fields)
  if exemplars:
    prompt = templates.few_shot_prompt(prompt, [pair(e) for e in exemplars],
                                       max_tokens=template_cfg.few_shot_max_tokens,
                                       count_tokens=count_tokens)
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
  templates.styled((templates.Template("{x}"), ), template_cfg.style, "")  # checks the style
  prompt_mix = dict(template_cfg.prompt_mix)
  unknown = set(prompt_mix) - set(PROMPT_SETTINGS)
  if unknown or any(w < 0 for w in prompt_mix.values()) or not sum(prompt_mix.values()) > 0:
    raise ValueError(
        f"data.template.prompt_mix={prompt_mix}: weights (>= 0, not all 0) of {PROMPT_SETTINGS}")
  if prompt_mix.get("few_shot", 0) > 0 and template_cfg.num_shots < 1:
    raise ValueError("data.template.prompt_mix.few_shot > 0 needs data.template.num_shots >= 1")
  format_mix = dict(template_cfg.format_mix)
  for fmt in format_mix:
    if fmt not in templates.FORMATS and fmt != templates.CHAT_TEMPLATE:
      raise ValueError(
          f"data.template.format_mix: unknown format {fmt!r}; formats are "
          f"{sorted(templates.FORMATS)} or {templates.CHAT_TEMPLATE!r}")
  if format_mix and (any(w < 0 for w in format_mix.values()) or not sum(format_mix.values()) > 0):
    raise ValueError(f"data.template.format_mix={format_mix}: weights must be >= 0 and not all 0")
  for key in ("preamble_rate", "omit_input_rate"):
    if not 0 <= template_cfg[key] <= 1:
      raise ValueError(f"data.template.{key}={template_cfg[key]} is not in [0, 1]")
  if template_cfg.preamble_rate > 0 and not template_cfg.preambles:
    raise ValueError("data.template.preamble_rate > 0 needs data.template.preambles")


class Renderer:
  """Record -> example features: template, prompt setting, preamble, output format, tokens,
  truncation.

  Called by Grain's `random_map` with an RNG seeded by the element's index, so
  the same element always renders the same way. Every training example draws, by the
  data.template weights: a template; zero-shot, few-shot or chain-of-thought (a task without
  rationales renders zero-shot); a preamble (a system turn) or none; whether an input turn joins
  the instruction; and its output format. `stats.renderings` counts what was drawn. Few-shot
  exemplars are drawn from `kept` (per task, the training indices the mixture keeps; default all),
  so that an example decontamination or deduplication dropped never returns inside a prompt.
  A preference pair carries its precomputed DPO reference sums from `reference` (per task,
  [records, 2], see dpo_reference.py) where given.
  """

  def __init__(self, data_cfg, tokenizer: Tokenizer | None, train_tasks: Sequence[tasks.Task],
               stats: Stats, kept: dict[str, np.ndarray] | None = None,
               reference: dict[str, np.ndarray] | None = None):
    check_template_config(data_cfg.template)
    self.cfg, self.tokenizer, self.stats = data_cfg, tokenizer, stats
    self.kept, self.reference = kept, reference
    self.tasks = {t.name: t for t in train_tasks}
    template_cfg = data_cfg.template
    self.templates = {
        t.name: templates.select_templates(
            templates.styled(t.templates, template_cfg.style, t.name) if t.templates else (),
            inverted=template_cfg.inverted, max_templates=template_cfg.max_templates)
        for t in train_tasks
    }
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
    """(conversation, output format) of one (task name, index, record), or None for a skipped
    record."""
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
        pool = np.arange(len(records)) if self.kept is None else self.kept[task_name]
        drawn = rng.choice(len(pool), size=min(template_cfg.num_shots + 1, len(pool)), replace=False)
        candidates = [int(pool[j]) for j in drawn if pool[j] != index][:template_cfg.num_shots]
        exemplars = [
            f for f in (self.fields(task, records[i]) for i in candidates) if f is not None
        ]
      turns = conversation(task, fields, template, template_cfg,
                           chain_of_thought=setting == "chain_of_thought", exemplars=exemplars,
                           count_tokens=lambda text: len(self.tokenizer.encode(text)))
    counts[f"prompt:{setting}"] += 1
    if template_cfg.preamble_rate and rng.random() < template_cfg.preamble_rate:
      turns = [("system", template_cfg.preambles[int(rng.integers(len(template_cfg.preambles)))]),
               *turns]
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
    task_name, index, record = element
    if self.tasks[task_name].preference:
      pair = self._pair(task_name, *rendered, record["rejected"])
      if pair is None or self.reference is None:
        return pair
      chosen, rejected = self.reference[task_name][index]
      if np.isnan(chosen):
        raise ValueError(f"task {task_name}: row {index} has no precomputed DPO reference "
                         "log-probabilities (dpo_reference.py)")
      return packing.with_reference(pair, chosen, rejected)
    tokens, weights = self.tokenizer.encode_conversation(*rendered)
    tokens, weights, truncated = packing.truncate(tokens, weights, self.cfg.seq_len + 1,
                                                  self.cfg.truncation)
    self.stats.truncated += truncated
    return packing.example_features(tokens, weights)

  def _pair(self, task_name: str, turns, fmt: str, rejected: str) -> dict | None:
    """A preference pair's features (packing.pair_features): the conversation with its chosen
    answer and with `rejected`, only each final answer weighted; None (counted as skipped) if
    the pair does not fit in a row even with its prompt cut."""
    answers = encode_pair(self.tokenizer, turns, rejected, fmt)
    pair = packing.pair_features(*answers, self.cfg.seq_len)
    if pair is None:
      self.stats.skip(task_name, f"task {task_name}: a preference pair of {len(answers[0][0])} and "
                      f"{len(answers[1][0])} tokens does not fit in "
                      f"data.seq_len={self.cfg.seq_len} "
                      "with its prompt cut to its first token")
      return None
    features, truncated = pair
    self.stats.truncated += truncated
    return features


def encode_pair(tokenizer: Tokenizer, turns, rejected: str,
                fmt: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """[(tokens, weights)] of a preference pair's conversation (`turns`, ending with the chosen
  answer) and of the same with `rejected` as its answer, each weighting its final answer only."""
  encoded = []
  for answer in (turns[-1][1], rejected):
    conversation = [*turns[:-1], ("assistant", answer)]
    tokens, weights = tokenizer.encode_conversation(conversation, fmt)
    encoded.append((tokens, final_answer_weights(weights, conversation)))
  return encoded


def final_answer_weights(weights: np.ndarray, conversation) -> np.ndarray:
  """Loss weights of the conversation's last assistant turn only: an encoded conversation weights
  every assistant turn, each as one run of weighted tokens (then perhaps EOS)."""
  starts = np.flatnonzero((weights > 0) & (np.concatenate([[0], weights[:-1]]) == 0))
  earlier = sum(role == "assistant" for role, _ in conversation) - 1
  out = weights.copy()
  out[:starts[earlier]] = 0
  return out
