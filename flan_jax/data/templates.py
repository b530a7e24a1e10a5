"""Instruction templates, rendering modes and output formats.

A template is a (prompt, response) pair of patterns over an example's fields.
Rendering yields a conversation: a list of (role, text) turns. An output format
then turns a conversation into text segments, each marked as prompt (weight 0)
or response (weight 1), with an end-of-sequence marker after every response.

Substitution is a single regex pass that only looks up `{name}` in the fields:
no attribute access, indexing or format specs, and substituted values are never
re-read, so a field value such as "{0.__class__}" renders literally.

The format `chat_template` is a pretrained tokenizer's own Jinja chat template
(`ChatTemplate`), rendered in a sandbox as transformers renders it.
"""

import dataclasses
import datetime
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import jinja2
from jinja2 import sandbox

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")

COT_TRIGGER = "Let's think step by step."
# FLAN 2021's ablation of instructions (Sec. 4.3, Figure 8): natural-language templates, the dataset name
# and the inputs, or the inputs alone.
TEMPLATE_STYLES = ("instructions", "task_name", "none")
# System texts drawn for some training examples (data.template.preambles), so that a model does not learn
# one fixed opening; Alpaca's preamble among them.
PREAMBLES = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "You are a helpful assistant. Answer the request below.",
    "Read the task carefully and give a correct, concise answer.",
    "Follow the instructions.",
)
ROLES = ("system", "user", "input", "assistant")
EOS = None  # a segment whose text is EOS stands for the tokenizer's end-of-sequence id

# Per format, per role: (prefix, suffix). Prefixes are prompt text; an assistant
# turn's suffix is part of the response and is trained on.
FORMATS = {
    "flan": {
        "system": ("", "\n\n"), "user": ("", "\n\n"), "input": ("", "\n\n"), "assistant": ("", ""),
    },
    "alpaca": {
        "system": ("", "\n\n"),
        "user": ("### Instruction:\n", "\n\n"),
        "input": ("### Input:\n", "\n\n"),
        "assistant": ("### Response:\n", ""),
    },
    "chat": {
        "system": ("<|system|>\n", "\n"),
        "user": ("<|user|>\n", "\n"),
        "input": ("", "\n"),
        "assistant": ("<|assistant|>\n", "\n"),
    },
    # Pretrained families' chat formats, as their Hugging Face chat templates render one exchange
    # (the tokenizer adds BOS). A format without a "system" or "input" role folds that text into the
    # user turn, as those templates do. The last turn's closing newline (ChatML, Gemma) is left out, so
    # that the end-of-turn token is last and doubles as EOS where the tokenizer's EOS is that token.
    "llama3": {
        "system": ("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
        "user": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        "assistant": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    },
    "chatml": {  # Qwen 2 / 2.5
        "system": ("<|im_start|>system\n", "<|im_end|>\n"),
        "user": ("<|im_start|>user\n", "<|im_end|>\n"),
        "assistant": ("<|im_start|>assistant\n", "<|im_end|>"),
    },
    "gemma": {
        "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
        "assistant": ("<start_of_turn>model\n", "<end_of_turn>"),
    },
    "mistral": {
        "user": ("[INST] ", " [/INST]"),
        "assistant": ("", ""),
    },
}
CHAT_TEMPLATE = "chat_template"  # the format that renders with the tokenizer's own chat template
# The day a chat template's strftime_now renders (Llama 3.x's "Today Date" system line), never the
# clock's: the same examples train and evaluate on any day. data.tokenizer.chat_template_date.
CHAT_TEMPLATE_DATE = "2026-01-01"
# Markers a trained tokenizer keeps as single pieces.
SPECIAL_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")


@dataclasses.dataclass(frozen=True)
class Template:
  prompt: str
  response: str = "{answer}"
  inverted: bool = False  # "turned around": generates an input from the answer


def substitute(pattern: str, fields: dict[str, Any], where: str = "template") -> str:
  def replace(m):
    if m.group(0) in ("{{", "}}"):
      return m.group(0)[0]
    name = m.group(1)
    if name not in fields:
      raise KeyError(f"{where}: field {name!r} is not in the example (fields: {sorted(fields)})")
    return str(fields[name])
  return _PLACEHOLDER.sub(replace, pattern)


def placeholders(pattern: str) -> list[str]:
  """The field names a pattern reads, in order of first use."""
  return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(pattern) if m.group(1)))


def styled(task_templates: Sequence[Template], style: str, task_name: str) -> tuple[Template, ...]:
  """A task's training templates in one of TEMPLATE_STYLES: `instructions` keeps them; `task_name`
  and `none` are one template of the inputs (the fields the first not-inverted template reads, in its
  order, one per line, with the options where it shows them), after `[task name]` or alone. Inverted
  templates need an instruction, so those two styles have none."""
  if style not in TEMPLATE_STYLES:
    raise ValueError(f"data.template.style={style!r}: choose from {', '.join(TEMPLATE_STYLES)}")
  if style == "instructions":
    return tuple(task_templates)
  first = next(t for t in task_templates if not t.inverted)
  inputs = "\n".join(f"{{{n}}}" for n in placeholders(first.prompt) if n not in ("options_", "answer"))
  options = "{options_}" if "{options_}" in first.prompt else ""
  name = task_name.replace("{", "{{").replace("}", "}}")
  prefix = f"[{name}]\n" if style == "task_name" else ""
  return (Template(prefix + inputs + options, first.response),)


def join_input_turns(conversation: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
  """Each `input` turn joined to the user turn before it (with a blank line), as one instruction."""
  out = []
  for role, text in conversation:
    if role == "input" and out and out[-1][0] == "user":
      out[-1] = ("user", f"{out[-1][1]}\n\n{text}")
    else:
      out.append((role, text))
  return out


def user_text(conversation: Sequence[tuple[str, str]]) -> str:
  """What a person would type for a conversation that awaits its answer: its user turns (input turns
  joined to them), separated by blank lines. Judges and people are shown this, whatever the format."""
  return "\n\n".join(text for role, text in join_input_turns(conversation) if role == "user")


def options_suffix(options: Sequence[str]) -> str:
  return "\n\nOPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def select_templates(templates: Sequence[Template], *, inverted: bool, max_templates: int) -> list[Template]:
  """Templates used for training: the first `max_templates` (0: all), inverted ones optional."""
  chosen = [t for t in templates if inverted or not t.inverted]
  return chosen[:max_templates] if max_templates else chosen


def render_pair(template: Template, fields: dict[str, Any], *, options: Sequence[str] | None,
                show_options: bool, chain_of_thought: bool, where: str) -> tuple[str, str]:
  """One example through one template: (prompt, response) strings."""
  values = dict(fields)
  values["options_"] = options_suffix(options) if (options and show_options) else ""
  prompt = substitute(template.prompt, values, where)
  response = substitute(template.response, values, where)
  if chain_of_thought and fields.get("rationale") and not template.inverted:
    prompt = f"{prompt}\n{COT_TRIGGER}"
    response = f"{fields['rationale']} So the answer is {response}."
  return prompt, response


def few_shot_prompt(query: str, exemplars: Sequence[tuple[str, str]], *, max_tokens: int,
                    count_tokens: Callable[[str], int]) -> str:
  """Prepends as many exemplars as fit in `max_tokens` (counted with the query)."""
  shots = list(exemplars)
  while shots:
    text = "\n\n".join(f"{p}\n{r}" for p, r in shots) + "\n\n" + query
    if count_tokens(text) <= max_tokens:
      return text
    shots.pop()
  return query


def to_segments(conversation: Sequence[tuple[str, str]], fmt: str,
                chat_template: "ChatTemplate | None" = None) -> list[tuple[str | None, int]]:
  """Conversation -> [(text or EOS, loss weight)] in the given output format (`chat_template`: the
  tokenizer's own, passed as `chat_template`)."""
  if fmt == CHAT_TEMPLATE:
    return require(chat_template).segments(conversation)
  if fmt not in FORMATS:
    raise ValueError(f"unknown output format {fmt!r}; formats are {sorted(FORMATS)} or {CHAT_TEMPLATE!r}")
  markers = FORMATS[fmt]
  segments = []
  for role, text in _fold_into_user_turns(conversation, markers):
    if role not in markers:
      raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    prefix, suffix = markers[role]
    if role == "assistant":
      segments += [(prefix, 0), (text + suffix, 1), (EOS, 1)]
    else:
      segments.append((prefix + text + suffix, 0))
  return [(t, w) for t, w in segments if t != ""]


def require(chat_template: "ChatTemplate | None") -> "ChatTemplate":
  if chat_template is None:
    raise ValueError("data.template.format='chat_template' needs a tokenizer that ships a chat template "
                     "(tokenizer_config.json's chat_template or chat_template.jinja); this one has none")
  return chat_template


def _fold_into_user_turns(conversation, markers):
  """System text joins the next user turn and input text the previous one, where the format has no such role."""
  if "input" not in markers:
    conversation = join_input_turns(conversation)
  folded, pending_system = [], []
  for role, text in conversation:
    if role == "system" and role not in markers:
      pending_system.append(text)
    elif role == "user" and pending_system:
      folded.append((role, "\n\n".join([*pending_system, text])))
      pending_system = []
    else:
      folded.append((role, text))
  return folded


def to_text(conversation: Sequence[tuple[str, str]], fmt: str, eos: str = "</s>",
            chat_template: "ChatTemplate | None" = None) -> str:
  """The conversation as one string, with `eos` where the EOS token goes."""
  return "".join(eos if t is EOS else t for t, _ in to_segments(conversation, fmt, chat_template))


class ChatTemplateError(ValueError):
  """A chat template that does not render, or does not render a conversation as training needs."""


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


class ChatTemplate:
  """A tokenizer's Jinja chat template, rendered as transformers' `apply_chat_template` renders it: a
  sandboxed environment with trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, a
  `tojson` filter, and the tokenizer's special tokens as variables (bos_token, eos_token, ...);
  except that `strftime_now` formats `date` (YYYY-MM-DD), not today.

  `segments` cuts a rendered conversation into prompt text (weight 0) and each assistant turn's
  content with its end-of-turn token (weight 1): the text up to an assistant turn is the
  template's rendering of the turns before it with the generation prompt, the turn itself is
  what rendering one more message adds. A template whose renderings are not prefixes of one
  another (some drop earlier turns' reasoning) cannot be trained on and is an error.
  """

  def __init__(self, source: str, special_tokens: dict[str, str], end_tokens: Sequence[str], where: str,
               date: str = CHAT_TEMPLATE_DATE):
    self.source, self.where = source, where
    try:
      day = datetime.datetime.fromisoformat(date)
    except (TypeError, ValueError):
      raise ChatTemplateError(f"data.tokenizer.chat_template_date={date!r}: expected YYYY-MM-DD") from None
    self.variables = dict(special_tokens)
    self.end_tokens = tuple(t for t in end_tokens if t)  # special tokens that can end a turn
    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, sort_keys=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = day.strftime
    try:
      self.template = env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
      raise ChatTemplateError(f"{where}: the chat template does not parse: {e}") from None

  def render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    try:
      return self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                  **self.variables)
    except jinja2.exceptions.TemplateError as e:
      roles = [m["role"] for m in messages]
      raise ChatTemplateError(f"{self.where}: the chat template does not render messages with roles {roles}: "
                              f"{e}") from None

  @staticmethod
  def messages(conversation: Sequence[tuple[str, str]]) -> list[dict]:
    """Turns as chat messages; an `input` turn joins the user turn before it (chat templates have no such role)."""
    return [{"role": "user" if role == "input" else role, "content": text}
            for role, text in join_input_turns(conversation)]

  def generation_prompt(self, conversation: Sequence[tuple[str, str]]) -> str:
    """The text a model sees before it answers the conversation's last turn."""
    return self.render(self.messages(conversation), add_generation_prompt=True)

  def segments(self, conversation: Sequence[tuple[str, str]]) -> list[tuple[str, int]]:
    messages = self.messages(conversation)
    segments, done = [], ""
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      prompt = self.render(messages[:i], add_generation_prompt=True)
      full = self.render(messages[:i + 1], add_generation_prompt=False)
      if not prompt.startswith(done) or not full.startswith(prompt):
        raise ChatTemplateError(f"{self.where}: the chat template does not render assistant turn {i} as an "
                                "extension of the turns before it, so its tokens cannot be marked for training")
      reply = full[len(prompt):]
      content = message["content"]
      start = reply.find(content)
      if start < 0:
        content = content.strip()
        start = reply.find(content) if content else -1
      if start < 0:
        raise ChatTemplateError(f"{self.where}: the chat template does not render assistant turn {i}'s text as "
                                f"given: it rendered {reply!r}")
      end = start + len(content)
      ends = [reply.find(t, end) + len(t) for t in self.end_tokens if reply.find(t, end) >= 0]
      end = min(ends) if ends else len(reply)  # through the end-of-turn token
      segments += [(prompt[len(done):], 0), (reply[:start], 0), (reply[start:end], 1), (reply[end:], 0)]
      done = full
    if not messages or messages[-1]["role"] != "assistant":  # turns after the last answer (else `done` is all)
      rest = self.render(messages, add_generation_prompt=False)
      segments.append((rest[len(done):] if rest.startswith(done) else "", 0))
    return [(t, w) for t, w in segments if t]
