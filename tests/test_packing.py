import grain
import numpy as np
import pytest

from flan_jax.data import packing


def _example(tokens, weights):
  return packing.example_features(np.asarray(tokens, np.int32), np.asarray(weights, np.int32))


def _rows(examples, seq_len, num_bins, packer="best_fit"):
  ds = grain.MapDataset.source(examples).to_iter_dataset()
  packed = packing.pack(ds, seq_len, packer=packer, num_bins=num_bins, seed=0)
  # Sort rows so the test does not depend on the packer's row shuffle.
  return sorted(list(packed), key=lambda r: tuple(r["inputs"]))


def test_hand_built_pack_is_exact():
  # BOS=2, prompt tokens 10.., response tokens 20.., EOS=1.
  a = _example([2, 10, 11, 20, 21, 1], [0, 0, 0, 1, 1, 1])
  b = _example([2, 12, 22, 1], [0, 0, 1, 1])
  c = _example([2, 13, 14, 15, 23, 1], [0, 0, 0, 0, 1, 1])
  rows = _rows([a, b, c], seq_len=8, num_bins=2)
  assert len(rows) == 2
  packed_ab = [r for r in rows if r["inputs"][0] == 2 and 12 in r["inputs"]][0]
  other = [r for r in rows if r is not packed_ab][0]
  # Two examples share one row; targets are shifted inside each example only.
  ab_order = [2, 10, 11, 20, 21] + [2, 12, 22]
  np.testing.assert_array_equal(packed_ab["inputs"], ab_order)
  np.testing.assert_array_equal(packed_ab["targets"], [10, 11, 20, 21, 1] + [12, 22, 1])
  np.testing.assert_array_equal(packed_ab["segment_ids"], [1, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(packed_ab["positions"], [0, 1, 2, 3, 4, 0, 1, 2])
  np.testing.assert_array_equal(packed_ab["loss_weights"], [0, 0, 1, 1, 1, 0, 1, 1])
  # The third example is alone, padded with zeros everywhere.
  np.testing.assert_array_equal(other["inputs"], [2, 13, 14, 15, 23, 0, 0, 0])
  np.testing.assert_array_equal(other["targets"], [13, 14, 15, 23, 1, 0, 0, 0])
  np.testing.assert_array_equal(other["segment_ids"], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(other["positions"], [0, 1, 2, 3, 4, 0, 0, 0])
  np.testing.assert_array_equal(other["loss_weights"], [0, 0, 0, 1, 1, 0, 0, 0])
  assert packing.efficiency(np.stack([r["segment_ids"] for r in rows])) == 13 / 16


def test_weights_only_on_response_tokens_in_every_packed_row():
  rng = np.random.default_rng(0)
  examples = []
  for _ in range(200):
    p, r = int(rng.integers(1, 30)), int(rng.integers(1, 10))
    examples.append(_example([2] + [10] * p + [20] * r + [1], [0] * (p + 1) + [1] * (r + 1)))
  for row in _rows(examples, seq_len=64, num_bins=8):
    pad = row["segment_ids"] == 0
    assert not row["loss_weights"][pad].any()
    # A target is weighted exactly when it is a response token (20) or EOS (1).
    np.testing.assert_array_equal(row["loss_weights"][~pad], np.isin(row["targets"][~pad], [20, 1]))


def test_best_fit_packs_long_tailed_lengths_densely():
  # Instruction data lengths: lognormal, median 200 tokens, rows of 2048.
  rng = np.random.default_rng(0)
  lengths = np.clip(rng.lognormal(np.log(200), 1.0, 3000).astype(int), 4, 2049)
  examples = [_example(np.full(n, 5), np.ones(n)) for n in lengths]
  rows = _rows(examples, 2048, 64, "best_fit")
  assert sum((r["segment_ids"] > 0).sum() for r in rows) == sum(lengths - 1)  # every token placed once
  assert packing.efficiency(np.stack([r["segment_ids"] for r in rows])) > 0.98


def test_truncation_policies():
  tokens = np.array([2, 10, 11, 12, 13, 20, 21, 1], np.int32)
  weights = np.array([0, 0, 0, 0, 0, 1, 1, 1], np.int32)
  t, w, cut = packing.truncate(tokens, weights, 5, "prompt_left")
  assert cut
  np.testing.assert_array_equal(t, [2, 13, 20, 21, 1])  # BOS kept, oldest prompt tokens dropped
  np.testing.assert_array_equal(w, [0, 0, 1, 1, 1])
  t, w, cut = packing.truncate(tokens, weights, 3, "prompt_left")  # response alone too long: cut its end
  np.testing.assert_array_equal(t, [2, 20, 21])
  t, w, cut = packing.truncate(tokens, weights, 5, "right")
  np.testing.assert_array_equal(t, [2, 10, 11, 12, 13])
  assert packing.truncate(tokens, weights, 8, "right")[2] is False
  with pytest.raises(ValueError, match="unknown truncation policy"):
    packing.truncate(tokens, weights, 5, "middle")


def test_a_row_holds_at_most_max_segments_runs_padding_included():
  short = [_example([2, 20, 1], [0, 1, 1]) for _ in range(100)]
  rows = _rows(short, seq_len=256, num_bins=1)
  assert len(rows) == 4  # 100 two-token examples fit one 256-token row but for the bound
  for row in rows:
    runs = 1 + np.count_nonzero(np.diff(row["segment_ids"]))
    assert runs <= packing.MAX_SEGMENTS and row["segment_ids"].max() <= packing.MAX_SEGMENTS - 1


def _answer(prompt, answer):
  """(tokens, weights) of BOS, the prompt tokens and the answer tokens (weighted)."""
  return (np.asarray([2, *prompt, *answer], np.int32),
          np.asarray([0] * (1 + len(prompt)) + [1] * len(answer), np.int32))


def test_preference_pairs_pack_as_two_segments_of_one_row():
  pairs = [packing.pair_features(_answer([10 + i, 11], [20 + i, 1]), _answer([10 + i, 11], [30 + i, 31, 1]), 16)
           for i in range(3)]
  assert all(truncated is False for _, truncated in pairs)
  ds = grain.MapDataset.source([f for f, _ in pairs]).to_iter_dataset()
  rows = list(packing.pack(ds, 24, packer="best_fit", num_bins=1, seed=0, pairs=True))
  assert len(rows) == 2 and set(rows[0]) == set(packing.PAIR_BATCH_KEYS)  # 2 pairs of 9 inputs, then 1
  row = max(rows, key=lambda r: r["segment_ids"].max())
  # Pair k: its chosen sequence (4 inputs) is segment 2k - 1, its rejected one (5 inputs) segment 2k.
  expected_segments = np.concatenate([[2 * k + 1] * 4 + [2 * k + 2] * 5 for k in range(2)])
  np.testing.assert_array_equal(row["segment_ids"][:18], expected_segments)
  np.testing.assert_array_equal(row["preference"][:18], np.tile([1] * 4 + [2] * 5, 2))
  np.testing.assert_array_equal(row["positions"][:9], [0, 1, 2, 3, 0, 1, 2, 3, 4])
  assert row["segment_ids"][18:].tolist() == [0] * 6 and row["preference"][18:].tolist() == [0] * 6
  first = row["inputs"][:9].tolist()
  assert first[:4] == [2, first[1], 11, first[3]] and first[4:7] == [2, first[1], 11]  # the same prompt
  assert row["loss_weights"][:9].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 1]  # targets: answers and EOS


def test_a_pair_too_long_cuts_the_same_prompt_tokens_from_both_answers_or_is_refused():
  chosen, rejected = _answer(range(10, 20), [20, 1]), _answer(range(10, 20), [30, 31, 1])
  features, truncated = packing.pair_features(chosen, rejected, 20)  # 12 + 13 inputs: 5 too many
  assert truncated and len(features["inputs"]) == 19  # 3 prompt tokens dropped from each
  starts = np.flatnonzero(features["pair_positions"] == 0)
  chosen_inputs, rejected_inputs = np.split(features["inputs"], starts[1:])
  assert chosen_inputs.tolist() == [2, 13, 14, 15, 16, 17, 18, 19, 20]
  assert rejected_inputs.tolist() == [2, 13, 14, 15, 16, 17, 18, 19, 30, 31]
  assert packing.pair_features(chosen, rejected, 5)[0]["inputs"].tolist() == [2, 20, 2, 30, 31]
  assert packing.pair_features(chosen, rejected, 4) is None  # BOS and the answers alone do not fit
