import numpy as np
import pytest

from flan_jax.data import tokenizer as tokenizer_lib, vocab
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


def test_load_a_model_file_and_override_ids(tokenizer, tiny_config):
  loaded = tokenizer_lib.load(tokenizer.path, eos_id=5)
  assert (loaded.pad_id, loaded.eos_id, loaded.bos_id) == (0, 5, 2)
  tiny_config.data.tokenizer.model = tokenizer.path
  assert vocab.get_tokenizer(tiny_config.data, "/nonexistent").path == tokenizer.path
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizer_lib.load("/tmp/missing.model")


def test_hugging_face_tokenizer_json_with_special_tokens(tmp_path):
  from transformers import PreTrainedTokenizerFast

  from flan_jax.data import templates
  from tests.helpers import make_hf_tokenizer
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


def test_bos_and_eos_follow_each_tokenizer_kind(tmp_path, tokenizer):
  """What a raw text gets around it: Llama 3's post-processor BOS; none for ChatML models (Qwen, SmolLM);
  tokenizer_config.json's add_bos_token/add_eos_token over the post-processor; SentencePiece's BOS.
  transformers' own tokenizer is the reference where it honours the same rule."""
  import json

  from transformers import AutoTokenizer

  from tests.helpers import family_tokenizer
  text = "Is the cat on the mat?"
  for family, bos in (("llama3", "<|begin_of_text|>"), ("chatml", None), ("gemma", "<bos>")):
    family_tokenizer(tmp_path / family, family)
    ours = tokenizer_lib.load(str(tmp_path / family))
    assert ours.encode_text(text) == AutoTokenizer.from_pretrained(str(tmp_path / family))(text).input_ids
    assert ours.prefix_ids == ((ours.backend.token_to_id(bos),) if bos else ()) and ours.suffix_ids == ()
    tokens, weights = ours.encode_conversation([("user", text), ("assistant", "Yes.")], "flan")
    assert tokens.tolist() == [*ours.prefix_ids, *ours.encode(text + "\n\n"), *ours.encode("Yes."), ours.eos_id]
    assert weights.tolist()[-2:] == [1, 1] and not weights[:len(ours.prefix_ids)].any()
  config_path = tmp_path / "llama3" / "tokenizer_config.json"
  config = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**config, "add_bos_token": False, "add_eos_token": True}))
  flagged = tokenizer_lib.load(str(tmp_path / "llama3"))
  assert flagged.prefix_ids == () and flagged.suffix_ids == (flagged.eos_id,)
  assert flagged.encode_text(text) == [*flagged.encode(text), flagged.eos_id]
  assert tokenizer.prefix_ids == (tokenizer.bos_id,) and tokenizer.encode_text("a")[0] == tokenizer.bos_id


def test_stop_ids_and_special_token_errors(tmp_path):
  import json

  from tests.helpers import family_tokenizer
  family_tokenizer(tmp_path, "gemma")
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 9]}))
  loaded = tokenizer_lib.load(str(tmp_path))
  assert loaded.stop_ids == (loaded.eos_id, 1, 9)  # <eos> and the ids generation_config.json names
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|not_there|>"}))
  with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|not_there\|>' is not in the vocabulary"):
    tokenizer_lib.load(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": None}))
  with pytest.raises(ValueError, match=r"tokenizer.json: the model defines no eos_id; set data.tokenizer.eos_id"):
    tokenizer_lib.load(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": ')
  with pytest.raises(ValueError, match=r"tokenizer_config.json:1: invalid JSON"):
    tokenizer_lib.load(str(tmp_path))


def test_a_vocabulary_too_large_for_the_text_is_an_error_naming_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"data.tokenizer.vocab_size=5000: SentencePiece cannot train on this mixture"):
    tokenizer_lib.train(["a small text", "another one"] * 3, str(tmp_path / "t.model"), vocab_size=5000)
