import jax
import jax.numpy as jnp
import numpy as np

from flan_jax import scoring, sharding
from flan_jax.data import packing
from flan_jax.model import Decoder, ModelConfig


def small_model(vocab_size):
  cfg = ModelConfig(vocab_size=vocab_size, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    mlp_dim=64, dtype="float32")
  zeros = jnp.zeros((1, 8), jnp.int32)
  return Decoder(cfg), jax.jit(Decoder(cfg).init)(jax.random.key(3), zeros, zeros, zeros)["params"]


def one_device_mesh():
  return sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


def brute_force_log_likelihood(model, params, tokens, weights):
  """One full forward pass over one sequence, full log-softmax, summed over the weighted tokens."""
  f = packing.example_features(tokens, weights)
  inputs = jnp.asarray(f["inputs"])[None]
  hidden = model.apply({"params": params}, inputs, jnp.arange(inputs.shape[1])[None], jnp.ones_like(inputs))
  log_probs = jax.nn.log_softmax(hidden[0] @ model.apply({"params": params}, method=Decoder.unembedding))
  return float(jnp.sum(log_probs[jnp.arange(len(f["targets"])), f["targets"]] * f["loss_weights"]))


def test_scored_units_are_packed_several_to_a_row_longest_first():
  lengths = [50, 10, 30, 64, 5, 20]
  rows = scoring._first_fit_decreasing(lengths, 64)
  assert sorted(i for row in rows for i in row) == list(range(6)) and len(rows) == 3
  assert all(sum(lengths[i] for i in row) <= 64 for row in rows)


def test_continuations_scored_after_one_shared_prompt_equal_full_forward_passes():
  """Prompts of different lengths (several to a row, over several batches), 1-3 continuations each,
  partly weighted: each score is that of a full forward pass over prompt + continuation alone."""
  model, params = small_model(50)
  rng = np.random.default_rng(0)
  requests = []
  for prompt_len in (1, 3, 9, 70, 5, 2, 66):
    continuations = []
    for n in rng.integers(1, 6, size=rng.integers(1, 4)):
      weights = np.ones(n, np.float32)
      weights[-1] = rng.integers(0, 2)  # e.g. a trailing token that is not scored
      continuations.append((rng.integers(1, 50, n), weights))
    requests.append((rng.integers(1, 50, prompt_len), continuations))
  scores = scoring.score_continuations(params, model, requests, batch_size=3, seq_len=128, chunk_len=8,
                                       mesh=one_device_mesh())
  for (prompt, continuations), got in zip(requests, scores):
    expected = [brute_force_log_likelihood(model, params, np.concatenate([prompt, c]),
                                           np.concatenate([np.zeros(len(prompt)), w])) for c, w in continuations]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
