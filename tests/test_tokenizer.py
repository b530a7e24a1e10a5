import numpy as np
import pytest

from flan_jax.data import pipeline, tokenizer as tokenizer_lib
from flan_jax.data.templates import EOS


def test_explicit_special_ids(tokenizer):
  assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 2)
  assert tokenizer.vocab_size == 1024


def test_text_survives_exactly(tokenizer):
  text = "Premise: a\n\nOPTIONS:\n- yes\n- no   spaced  \n\tel pájaro rojo {0.__class__} 1234 ✓"
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_segments_concatenate_and_carry_weights(tokenizer):
  segments = [("Q: what is 2 + 2?\n\n", 0), ("4", 1), (EOS, 1)]
  tokens, weights = tokenizer.encode_segments(segments)
  assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
  prompt = tokenizer.encode("Q: what is 2 + 2?\n\n")
  np.testing.assert_array_equal(tokens[1:1 + len(prompt)], prompt)
  np.testing.assert_array_equal(weights, [0] * (1 + len(prompt)) + [1] * (len(tokens) - 1 - len(prompt)))
  assert tokenizer.decode(tokens) == "Q: what is 2 + 2?\n\n4"


def test_trained_tokenizer_is_cached(tiny_config, tmp_path, monkeypatch):
  first = pipeline.get_tokenizer(tiny_config.data, str(tmp_path))
  monkeypatch.setattr(tokenizer_lib, "train", lambda *a, **k: pytest.fail("trained again instead of loading"))
  second = pipeline.get_tokenizer(tiny_config.data, str(tmp_path))
  assert second.path == first.path
  assert second.encode("the red cat") == first.encode("the red cat")


def test_load_a_model_file_and_override_ids(tokenizer, tiny_config):
  loaded = tokenizer_lib.load(tokenizer.path, eos_id=5)
  assert (loaded.pad_id, loaded.eos_id, loaded.bos_id) == (0, 5, 2)
  tiny_config.data.tokenizer.model = tokenizer.path
  assert pipeline.get_tokenizer(tiny_config.data, "/nonexistent").path == tokenizer.path
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizer_lib.load("/tmp/missing.model")


def test_hugging_face_tokenizer_json_with_special_tokens(tmp_path):
  from transformers import PreTrainedTokenizerFast

  from flan_jax.data import templates
  from tests.conftest import make_hf_tokenizer
  texts = ["The quick brown fox jumps over the lazy dog.", "Translate to French: cat -> chat", "1 + 2 = 3"] * 20
  make_hf_tokenizer(str(tmp_path), texts, vocab_size=300)
  tokenizer = tokenizer_lib.load(str(tmp_path))  # the directory: tokenizer.json and tokenizer_config.json
  assert isinstance(tokenizer, tokenizer_lib.HuggingFaceTokenizer)
  vocab = tokenizer.backend.get_vocab()
  assert (tokenizer.bos_id, tokenizer.eos_id) == (vocab["<|begin_of_text|>"], vocab["<|eot_id|>"])
  assert tokenizer.pad_id == tokenizer.eos_id  # no pad token: pad with EOS
  text = "The lazy cat jumps: ¿qué? 42"
  reference = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
  assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False)
  assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.encode("<|eot_id|>") == [tokenizer.eos_id]  # special tokens written as text become their id
  conversation = [("user", "Translate to French: cat"), ("assistant", "chat")]
  tokens, weights = tokenizer.encode_segments(templates.to_segments(conversation, "llama3"))
  assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id and tokens[-2] != tokenizer.eos_id
  assert tokenizer.decode(tokens[weights == 1]) == "chat"  # the answer and its end of turn (EOS) are trained on
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
    tokenizer_lib.load(str(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else "")
