import importlib.util
import os

import pytest

# Eight simulated CPU devices for the sharding tests; XLA reads this when jax is first imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

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
