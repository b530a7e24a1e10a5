import importlib.util
import json
import os

import pytest

# Eight simulated CPU devices for the sharding tests; XLA reads this when jax is first imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# The tests compute on the CPU; with libtpu installed (for flan_jax.plan) JAX would first try a TPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's get_config(arg), as `--config configs/<name>.py:arg` would load it."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture
def tiny_config():
  return load_config("tiny")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  """The tiny config's trained tokenizer, trained once per test session."""
  from flan_jax.data import pipeline
  return pipeline.get_tokenizer(load_config("tiny").data, str(tmp_path_factory.mktemp("tokenizer")))


LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


# Llama 3's chat template, as its tokenizer_config.json ships it (less the tool-calling branches).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def make_hf_tokenizer(directory, texts, vocab_size=400, chat_template=None):
  """A byte-level BPE tokenizer.json with Llama 3's special tokens and its post-processor (BOS before
  every text), and its tokenizer_config.json, trained on `texts` with the `tokenizers` library, as a
  pretrained model directory carries it."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA3_SPECIAL,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer)
  bos = "<|begin_of_text|>"
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  config = {"bos_token": bos, "eos_token": "<|eot_id|>", "pad_token": None}
  if chat_template:
    config["chat_template"] = chat_template
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return tokenizer.get_vocab_size()


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory):
  """(checkpoint dir, transformers model, transformers tokenizer): a tiny random Llama with a Llama 3
  style tokenizer and chat template, imported with flan_jax.convert; the reference for text-in,
  text-out checks of the tools that load an imported model."""
  from flan_jax import convert
  from tests.test_convert import make_hf_chat_model
  root = tmp_path_factory.mktemp("chat_checkpoint")
  model, reference = make_hf_chat_model("llama", root / "hf")
  convert.import_checkpoint(str(root / "hf"), str(root / "ckpt"))
  return str(root / "ckpt"), model, reference
