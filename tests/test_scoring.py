import numpy as np

from flan_jax import scoring
from flan_jax.model import Decoder
from tests.helpers import brute_force_log_likelihood, one_device_mesh, small_model


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
  # One continuation the model's own greedy choice, so greedy flags of both values are checked.
  prompt = requests[0][0]
  greedy_tokens = []
  for _ in range(3):
    sequence = np.concatenate([prompt, greedy_tokens]).astype(np.int32)
    hidden = model.apply({"params": params}, sequence[None], np.arange(len(sequence))[None],
                         np.ones((1, len(sequence)), np.int32))
    logits = hidden[0, -1] @ model.apply({"params": params}, method=Decoder.unembedding)
    greedy_tokens.append(int(np.argmax(logits)))
  requests[0][1].append((np.asarray(greedy_tokens), np.ones(3, np.float32)))
  scores, greedy = scoring.score_continuations(params, model, requests, batch_size=3, seq_len=128, chunk_len=8,
                                               mesh=one_device_mesh())
  assert greedy[0][-1] and not all(g.all() for g in greedy)
  for (prompt, continuations), got, got_greedy in zip(requests, scores, greedy):
    expected = [brute_force_log_likelihood(model, params, np.concatenate([prompt, c]),
                                           np.concatenate([np.zeros(len(prompt)), w]), greedy=True)
                for c, w in continuations]
    np.testing.assert_allclose(got, [e[0] for e in expected], rtol=1e-4, atol=1e-4)
    assert got_greedy.tolist() == [e[1] for e in expected]
