"""Tokenizers: load a SentencePiece `.model` or a Hugging Face `tokenizer.json`, or train a
SentencePiece model on the mixture's text and cache it.

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

from flan_jax.data.templates import EOS, SPECIAL_MARKERS

# Ids of a trained model; a loaded model's own ids are used unless the config overrides them.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """Token ids and text, over either backend (subclasses below). bos_id -1: the model has none (Qwen)."""
  backend: Any
  pad_id: int
  eos_id: int
  bos_id: int
  path: str

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def _decode(self, ids: list[int]) -> str:
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    special = {self.pad_id, self.eos_id, self.bos_id}
    return self._decode([int(i) for i in ids if int(i) not in special])

  def encode_segments(self, segments: Sequence[tuple[str | None, int]]) -> tuple[np.ndarray, np.ndarray]:
    """[(text or EOS, weight)] -> (token ids with a leading BOS, per-token loss weights). An EOS right
    after an EOS token already in the text (a chat format's end of turn, e.g. Llama 3's <|eot_id|>) is
    not repeated."""
    tokens, weights = ([self.bos_id], [0]) if self.bos_id >= 0 else ([], [])
    for text, weight in segments:
      if text is EOS and tokens and tokens[-1] == self.eos_id:
        continue
      ids = [self.eos_id] if text is EOS else self.encode(text)
      tokens += ids
      weights += [weight] * len(ids)
    return np.asarray(tokens, np.int32), np.asarray(weights, np.int32)


class SentencePieceTokenizer(Tokenizer):
  @property
  def vocab_size(self) -> int:
    return self.backend.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text)

  def _decode(self, ids: list[int]) -> str:
    return self.backend.decode(ids)


class HuggingFaceTokenizer(Tokenizer):
  """A `tokenizer.json` (the `tokenizers` library); special tokens come in as text (e.g. "<|eot_id|>")."""

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text, add_special_tokens=False).ids

  def _decode(self, ids: list[int]) -> str:
    return self.backend.decode(ids, skip_special_tokens=False)


def load(path: str, *, pad_id: int = -1, eos_id: int = -1, bos_id: int = -1) -> Tokenizer:
  """Loads a SentencePiece `.model` file, a Hugging Face `tokenizer.json`, or a directory holding
  either (tokenizer.json preferred, special tokens from its tokenizer_config.json). -1 keeps the
  model's own id. A model without a pad token pads with EOS (Hugging Face) or id 0 (SentencePiece):
  padding is never attended to or trained on."""
  if os.path.isdir(path):
    found = [os.path.join(path, f) for f in ("tokenizer.json", "tokenizer.model") if os.path.isfile(os.path.join(path, f))]
    if not found:
      raise FileNotFoundError(f"tokenizer directory {path!r} has neither tokenizer.json nor tokenizer.model")
    path = found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer model {path!r} does not exist")
  if path.endswith(".json"):
    tokenizer_cls, backend = HuggingFaceTokenizer, tokenizers.Tokenizer.from_file(path)
    own = _hf_special_ids(backend, os.path.join(os.path.dirname(path), "tokenizer_config.json"))
  else:
    tokenizer_cls, backend = SentencePieceTokenizer, spm.SentencePieceProcessor(model_file=path)
    own = {"pad_id": backend.pad_id(), "eos_id": backend.eos_id(), "bos_id": backend.bos_id()}
  overrides = {"pad_id": pad_id, "eos_id": eos_id, "bos_id": bos_id}
  resolved = {k: (overrides[k] if overrides[k] >= 0 else own[k]) for k in own}
  if resolved["eos_id"] < 0:
    raise ValueError(f"tokenizer {path}: the model defines no eos_id; set data.tokenizer.eos_id in the config")
  if resolved["pad_id"] < 0:
    resolved["pad_id"] = resolved["eos_id"] if tokenizer_cls is HuggingFaceTokenizer else 0
  return tokenizer_cls(backend=backend, path=path, **resolved)


def _hf_special_ids(backend, config_path: str) -> dict[str, int]:
  """bos/eos/pad ids named in tokenizer_config.json (strings or {"content": ...}); -1 where absent."""
  config = {}
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
  ids = {}
  for key in ("pad", "eos", "bos"):
    token = config.get(f"{key}_token")
    token = token.get("content") if isinstance(token, dict) else token
    token_id = backend.token_to_id(token) if token else None
    if token and token_id is None:
      raise ValueError(f"{config_path}: {key}_token {token!r} is not in the vocabulary")
    ids[f"{key}_id"] = -1 if token_id is None else token_id
  if config.get("add_bos_token") is False:
    ids["bos_id"] = -1
  return ids


def train(texts: Iterable[str], path: str, *, vocab_size: int) -> Tokenizer:
  """Trains a model on `texts` and writes it to `path`."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
      character_coverage=0.9995, byte_fallback=True, split_digits=True,
      normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True, split_by_whitespace=True,
      user_defined_symbols=["\n", *SPECIAL_MARKERS], max_sentence_length=1 << 16,
      pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID, minloglevel=2,
      num_threads=os.cpu_count() or 1)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, path)  # a half-written model is never picked up as the cached one
  return load(path)


def cache_path(cache_dir: str, spec: dict) -> str:
  """Where a trained model for this training spec lives; the spec's hash names the file."""
  digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(cache_dir, f"spm_{spec['vocab_size']}_{digest}.model")
