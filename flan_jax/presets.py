"""Model shapes the configs and the benchmark choose from: `presets.get(name)` gives a config.model ConfigDict.

`tiny` and `d512` are CPU-scale. The others are the shapes of public checkpoints
that `flan_jax.convert` can import (their vocabularies are the checkpoints' own).
"""

import dataclasses

import ml_collections

from flan_jax.model import ModelConfig

# Llama 3.1 and 3.2's vocabulary, rope and its scaling (factor 8 for 3.1, 32 for 3.2).
_LLAMA3_1 = dict(vocab_size=128_256, rope_theta=500_000.0, rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                 rope_high_freq_factor=4.0, rope_original_max_len=8192, norm_eps=1e-5)
_LLAMA3_2 = dict(vocab_size=128_256, rope_theta=500_000.0, rope_scaling_factor=32.0, rope_low_freq_factor=1.0,
                 rope_high_freq_factor=4.0, rope_original_max_len=8192, norm_eps=1e-5, tie_embeddings=True)

# Fields of flan_jax.model.ModelConfig, less vocab_size for the CPU-scale models (the tokenizer's).
PRESETS = {
    "tiny": dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=384,
                 tie_embeddings=True, normalize_tied_logits=True),
    "d512": dict(d_model=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64, mlp_dim=1536,
                 tie_embeddings=True, normalize_tied_logits=True),
    "llama3_2_1b": dict(_LLAMA3_2, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                        mlp_dim=8192),
    "llama3_2_3b": dict(_LLAMA3_2, d_model=3072, num_layers=28, num_heads=24, num_kv_heads=8, head_dim=128,
                        mlp_dim=8192),
    "llama3_8b": dict(vocab_size=128_256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                      mlp_dim=14_336, rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False),
    "llama3_1_70b": dict(_LLAMA3_1, d_model=8192, num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128,
                         mlp_dim=28_672, tie_embeddings=False),
    "gemma_2b": dict(vocab_size=256_000, d_model=2048, num_layers=18, num_heads=8, num_kv_heads=1, head_dim=256,
                     mlp_dim=16_384, norm_eps=1e-6, activation="gelu_tanh", tie_embeddings=True, embed_scale=True),
}


def get(name: str, vocab_size=None) -> ml_collections.ConfigDict:
  """The preset over ModelConfig's defaults. `vocab_size` (a value or a FieldReference, e.g. to the
  tokenizer's) is for presets without a vocabulary of their own."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
  fields = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING}
  model = ml_collections.ConfigDict({**fields, **PRESETS[name]})
  if "vocab_size" not in PRESETS[name]:
    model.vocab_size = vocab_size
  return model
