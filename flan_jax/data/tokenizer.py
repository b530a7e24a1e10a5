"""Tokenizers: load a SentencePiece `.model` or a Hugging Face `tokenizer.json` (with its special
tokens, BOS/EOS rules and chat template), or train a SentencePiece model on the mixture's text and
cache it.

Trained models keep text exactly (identity normalisation, no dummy prefix, no
whitespace folding), so segments tokenized one by one concatenate to the text
they came from, and newlines in templates survive. Byte fallback covers any
character the vocabulary lacks.
"""

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence

from typing import Any

import numpy as np
import sentencepiece as spm
import tokenizers
from etils import epath

from flan_jax.data import templates
from flan_jax.data.templates import EOS, SPECIAL_MARKERS

# Ids of a trained model; a loaded model's own ids are used unless the config overrides them.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """Token ids and text, over either backend (subclasses below).

  `prefix_ids` and `suffix_ids` are what the model's own tokenizer puts around a text (its BOS, if
  it adds one; Qwen and SmolLM add none). A training example starts with the prefix; its EOS is the
  response's own. Text rendered with the model's chat template carries its special tokens itself and
  gets no prefix, as transformers' `apply_chat_template` tokenizes it. `stop_ids` end generation: the
  EOS and any other end-of-turn id the model's generation_config.json names.
  """
  backend: Any
  pad_id: int
  eos_id: int
  bos_id: int  # -1: the model has none
  path: str
  prefix_ids: tuple[int, ...] = ()
  suffix_ids: tuple[int, ...] = ()
  stop_ids: tuple[int, ...] = ()
  chat_template: templates.ChatTemplate | None = None

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    """Text -> ids, no special tokens added (special tokens written as text become their ids)."""
    raise NotImplementedError

  def raw_decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """Ids -> text as transformers' `tokenizer.decode` writes it (special tokens as text, or left out)."""
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> text, less padding, BOS, EOS and stop ids (other special tokens are written out)."""
    special = {self.pad_id, self.eos_id, self.bos_id, *self.stop_ids}
    return self.raw_decode([int(i) for i in ids if int(i) not in special])

  def encode_text(self, text: str) -> list[int]:
    """Text as the model's own tokenizer encodes it by default (prefix and suffix added): a raw prompt."""
    return [*self.prefix_ids, *self.encode(text), *self.suffix_ids]

  def encode_segments(self, segments: Sequence[tuple[str | None, int]], *,
                      prefix: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """[(text or EOS, weight)] -> (token ids after the prefix, per-token loss weights). An EOS right
    after an EOS token already in the text (a chat format's end of turn, e.g. Llama 3's <|eot_id|>) is
    not repeated."""
    tokens = list(self.prefix_ids) if prefix else []
    weights = [0] * len(tokens)
    for text, weight in segments:
      if text is EOS and tokens and tokens[-1] == self.eos_id:
        continue
      ids = [self.eos_id] if text is EOS else self.encode(text)
      tokens += ids
      weights += [weight] * len(ids)
    return np.asarray(tokens, np.int32), np.asarray(weights, np.int32)

  def encode_conversation(self, conversation, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """[(role, text)] in output format `fmt` -> (token ids, loss weights): 1 on every assistant turn
    and its end of turn (and EOS), 0 elsewhere."""
    segments = templates.to_segments(conversation, fmt, self.chat_template)
    return self.encode_segments(segments, prefix=fmt != templates.CHAT_TEMPLATE)

  def generation_prompt(self, conversation, fmt: str) -> list[int]:
    """The ids a model sees before it answers the conversation (whose last turn is not the answer)."""
    if fmt == templates.CHAT_TEMPLATE:
      return self.encode(templates.require(self.chat_template).generation_prompt(conversation))
    tokens, weights = self.encode_segments(templates.to_segments([*conversation, ("assistant", "")], fmt))
    return tokens[:len(weights) - int(weights.sum())].tolist()  # less the empty answer's end of turn and EOS


class SentencePieceTokenizer(Tokenizer):
  @property
  def vocab_size(self) -> int:
    return self.backend.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text)

  def raw_decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.backend.decode(list(ids))  # control pieces never decode to text


class HuggingFaceTokenizer(Tokenizer):
  """A `tokenizer.json` (the `tokenizers` library); special tokens come in as text (e.g. "<|eot_id|>")."""

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text, add_special_tokens=False).ids

  def raw_decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def load(path: str, *, pad_id: int = -1, eos_id: int = -1, bos_id: int = -1,
         chat_template_date: str = templates.CHAT_TEMPLATE_DATE) -> Tokenizer:
  """Loads a SentencePiece `.model` file, a Hugging Face `tokenizer.json`, or a directory holding
  either (tokenizer.json preferred). Beside it, `tokenizer_config.json` names the special tokens,
  its `add_bos_token`/`add_eos_token` flags and its chat template (or `chat_template.jinja`), and
  `generation_config.json` the ids that end generation. -1 keeps the model's own id. A model
  without a pad token pads with EOS (Hugging Face) or id 0 (SentencePiece): padding is never
  attended to or trained on."""
  file = epath.Path(path)
  if file.is_dir():
    found = [file / f for f in ("tokenizer.json", "tokenizer.model") if (file / f).is_file()]
    if not found:
      raise FileNotFoundError(f"tokenizer directory {path!r} has neither tokenizer.json nor tokenizer.model")
    file = found[0]
  if not file.is_file():
    raise FileNotFoundError(f"tokenizer model {path!r} does not exist")
  path, directory = str(file), file.parent
  config = _read_json(directory / "tokenizer_config.json")
  if path.endswith(".json"):
    tokenizer_cls, backend = HuggingFaceTokenizer, tokenizers.Tokenizer.from_str(file.read_text())
    own = _hf_special_ids(backend, config, directory / "tokenizer_config.json")
    prefix, suffix = _hf_added_around_text(backend)
    special = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
  else:
    tokenizer_cls, backend = SentencePieceTokenizer, spm.SentencePieceProcessor(model_proto=file.read_bytes())
    own = {"pad_id": backend.pad_id(), "eos_id": backend.eos_id(), "bos_id": backend.bos_id()}
    prefix, suffix = [own["bos_id"]] if own["bos_id"] >= 0 else [], []  # SentencePiece's own default
    special = [backend.id_to_piece(i) for i in range(backend.get_piece_size())
               if backend.is_control(i) or backend.is_unknown(i)]
  overrides = {"pad_id": pad_id, "eos_id": eos_id, "bos_id": bos_id}
  resolved = {k: (overrides[k] if overrides[k] >= 0 else own[k]) for k in own}
  if resolved["eos_id"] < 0:
    raise ValueError(f"tokenizer {path}: the model defines no eos_id; set data.tokenizer.eos_id in the config")
  if resolved["pad_id"] < 0:
    resolved["pad_id"] = resolved["eos_id"] if tokenizer_cls is HuggingFaceTokenizer else 0
  # tokenizer_config.json's flags override the default (as Llama and Gemma tokenizers in transformers do).
  if config.get("add_bos_token") is not None:
    prefix = [i for i in prefix if i != own["bos_id"]]
    prefix = ([resolved["bos_id"]] if config["add_bos_token"] and resolved["bos_id"] >= 0 else []) + prefix
  if config.get("add_eos_token") is not None:
    suffix = [i for i in suffix if i != own["eos_id"]] + ([resolved["eos_id"]] if config["add_eos_token"] else [])
  if bos_id >= 0:  # an explicit BOS replaces the model's
    prefix = [bos_id] + [i for i in prefix if i != own["bos_id"]]
  generation = _read_json(directory / "generation_config.json").get("eos_token_id")
  stop = [resolved["eos_id"], *(generation if isinstance(generation, list) else [generation] if generation else [])]
  token_names = {f"{key}_token": config.get(f"{key}_token") for key in ("bos", "eos", "pad", "unk")}
  token_names = {k: (v.get("content") if isinstance(v, dict) else v) or "" for k, v in token_names.items()}
  return tokenizer_cls(backend=backend, path=path, prefix_ids=tuple(prefix), suffix_ids=tuple(suffix),
                       stop_ids=tuple(dict.fromkeys(int(i) for i in stop)),
                       chat_template=_chat_template(directory, config, token_names, special, chat_template_date),
                       **resolved)


def _read_json(path: epath.Path) -> dict:
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _hf_added_around_text(backend) -> tuple[list[int], list[int]]:
  """The ids the tokenizer's post-processor puts before and after a text (e.g. Llama 3's BOS)."""
  probe = "hello"
  plain = backend.encode(probe, add_special_tokens=False).ids
  full = backend.encode(probe, add_special_tokens=True).ids
  for start in range(len(full) - len(plain) + 1):
    if full[start:start + len(plain)] == plain:
      return full[:start], full[start + len(plain):]
  return [], []


def _hf_special_ids(backend, config: dict, config_path: epath.Path) -> dict[str, int]:
  """bos/eos/pad ids named in tokenizer_config.json (strings or {"content": ...}); -1 where absent."""
  ids = {}
  for key in ("pad", "eos", "bos"):
    token = config.get(f"{key}_token")
    token = token.get("content") if isinstance(token, dict) else token
    token_id = backend.token_to_id(token) if token else None
    if token and token_id is None:
      raise ValueError(f"{config_path}: {key}_token {token!r} is not in the vocabulary")
    ids[f"{key}_id"] = -1 if token_id is None else token_id
  return ids


def _chat_template(directory: epath.Path, config: dict, token_names: dict, special: list[str], date: str):
  """The model's chat template: `chat_template.jinja` (transformers 5) or tokenizer_config.json's
  `chat_template` (a string, or a list of named templates: the "default" one); None if it ships none."""
  jinja_path = directory / "chat_template.jinja"
  where = str(jinja_path)
  if jinja_path.is_file():
    source = jinja_path.read_text()
  else:
    source, where = config.get("chat_template"), str(directory / "tokenizer_config.json")
    if isinstance(source, list):
      named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
      source = named.get("default")
  if not source:
    return None
  return templates.ChatTemplate(source, token_names, special, where, date)


def train(texts: Iterable[str], path: str, *, vocab_size: int) -> Tokenizer:
  """Trains a model on `texts` and writes it to `path`."""
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=0.9995, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_by_whitespace=True,
        user_defined_symbols=["\n", *SPECIAL_MARKERS], max_sentence_length=1 << 16,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID, minloglevel=2,
        num_threads=os.cpu_count() or 1)
  except RuntimeError as e:  # e.g. a vocabulary larger than a small data set can fill
    raise ValueError(f"data.tokenizer.vocab_size={vocab_size}: SentencePiece cannot train on this mixture's text "
                     f"({str(e).split('] ')[-1]}); change the vocabulary size or set data.tokenizer.model") from None
  file = epath.Path(path)
  file.parent.mkdir(parents=True, exist_ok=True)
  tmp = file.parent / (file.name + ".tmp")
  tmp.write_bytes(model.getvalue())
  tmp.replace(file)  # a half-written model is never picked up as the cached one
  return load(path)


def checksum(tokenizer: Tokenizer) -> str:
  """sha256 of the tokenizer's file and chat template: what its token ids are a function of."""
  digest = hashlib.sha256(epath.Path(tokenizer.path).read_bytes())
  if tokenizer.chat_template is not None:
    digest.update(tokenizer.chat_template.source.encode())
  return digest.hexdigest()


def cache_path(cache_dir: str, spec: dict) -> str:
  """Where a trained model for this training spec lives; the spec's hash names the file."""
  digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
  return str(epath.Path(cache_dir) / f"spm_{spec['vocab_size']}_{digest}.model")
