import pytest

from tests.conftest import load_config


def test_configs_are_locked_and_typed(tiny_config):
  with pytest.raises(AttributeError, match="stepz"):
    tiny_config.train.stepz = 3
  with pytest.raises(TypeError):
    tiny_config.train.steps = "many"


def test_model_vocabulary_follows_the_tokenizer(tiny_config):
  tiny_config.data.tokenizer.vocab_size = 777
  assert tiny_config.model.vocab_size == 777


def test_flan2021_takes_its_held_out_cluster_and_model_from_the_argument():
  config = load_config("flan2021", "held_out=sentiment,model=llama3_8b")
  assert config.data.mixture == ("flan2021",) and config.data.held_out_clusters == ("sentiment",)
  assert config.model.d_model == 4096 and config.model.vocab_size == 128_256
  assert load_config("flan2021").data.held_out_clusters == ("nli",)
  small = load_config("flan2021", "model=tiny")
  assert small.model.d_model == 128 and small.model.vocab_size == 32_000
  with pytest.raises(ValueError, match="'heldout=nli'.*held_out, model"):
    load_config("flan2021", "heldout=nli")
