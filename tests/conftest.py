import os

import pytest

# Eight simulated CPU devices for the sharding tests; XLA reads this when jax is first imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# The tests compute on the CPU; with libtpu installed (for flan_jax.plan) JAX would first try a TPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from tests.helpers import load_config  # noqa: E402  (after the environment above)


@pytest.fixture
def tiny_config():
  return load_config("tiny")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  """The tiny config's trained tokenizer, trained once per test session."""
  from flan_jax.data import vocab
  return vocab.get_tokenizer(load_config("tiny").data, str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory):
  """(checkpoint dir, transformers model, transformers tokenizer): a tiny random Llama with a Llama 3
  style tokenizer and chat template, imported with flan_jax.convert; the reference for text-in,
  text-out checks of the tools that load an imported model."""
  from flan_jax import convert
  from tests.helpers import make_hf_chat_model
  root = tmp_path_factory.mktemp("chat_checkpoint")
  model, reference = make_hf_chat_model("llama", root / "hf")
  convert.import_checkpoint(str(root / "hf"), str(root / "ckpt"))
  return str(root / "ckpt"), model, reference
