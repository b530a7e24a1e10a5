"""SentencePiece tokenizer: load a `.model` file, or train one on the mixture's text and cache it.

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

import numpy as np
import sentencepiece as spm

from flan_jax.data.templates import EOS, SPECIAL_MARKERS

# Ids of a trained model; a loaded model's own ids are used unless the config overrides them.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  processor: spm.SentencePieceProcessor
  pad_id: int
  eos_id: int
  bos_id: int
  path: str

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self.processor.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    special = {self.pad_id, self.eos_id, self.bos_id}
    return self.processor.decode([int(i) for i in ids if int(i) not in special])

  def encode_segments(self, segments: Sequence[tuple[str | None, int]]) -> tuple[np.ndarray, np.ndarray]:
    """[(text or EOS, weight)] -> (token ids with a leading BOS, per-token loss weights)."""
    tokens, weights = [self.bos_id], [0]
    for text, weight in segments:
      ids = [self.eos_id] if text is EOS else self.encode(text)
      tokens += ids
      weights += [weight] * len(ids)
    return np.asarray(tokens, np.int32), np.asarray(weights, np.int32)


def load(path: str, *, pad_id: int = -1, eos_id: int = -1, bos_id: int = -1) -> Tokenizer:
  """Loads a `.model` file; -1 keeps the model's own id. A model without a pad
  piece (Llama's) pads with id 0: padding is never attended to or trained on."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer model {path!r} does not exist")
  processor = spm.SentencePieceProcessor(model_file=path)
  ids = {"pad_id": (pad_id, processor.pad_id()), "eos_id": (eos_id, processor.eos_id()),
         "bos_id": (bos_id, processor.bos_id())}
  resolved = {k: (override if override >= 0 else own) for k, (override, own) in ids.items()}
  if resolved["pad_id"] < 0:
    resolved["pad_id"] = 0
  for k in ("eos_id", "bos_id"):
    if resolved[k] < 0:
      raise ValueError(f"tokenizer {path}: the model defines no {k}; set data.tokenizer.{k} in the config")
  return Tokenizer(processor=processor, path=path, **resolved)


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
