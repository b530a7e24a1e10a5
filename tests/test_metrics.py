import pytest

from flan_jax import metrics


def test_classification_metrics_by_hand():
  targets = ["yes", "yes", "no", "no", "maybe"]
  predictions = ["yes", "no", "no", "no", "yes"]
  assert metrics.accuracy(predictions, targets) == {"accuracy": 60.0}
  # yes: tp 1 fp 1 fn 1 -> 0.5; no: tp 2 fp 1 fn 0 -> 0.8; maybe: tp 0 -> 0
  assert metrics.macro_f1(predictions, targets)["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 0.0) / 3)


def test_squad_exact_match_and_f1_by_hand():
  assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
  assert metrics.exact_match(["the cat", "a dog"], ["Cat.", "dogs"]) == {"exact_match": 50.0}
  # "red big house" vs "the big red barn": common {big, red} = 2; p = 2/3, r = 2/3 -> 2/3
  assert metrics.f1(["red big house"], ["the big red barn"])["f1"] == pytest.approx(100 * 2 / 3)
  assert metrics.f1(["nothing"], ["something"])["f1"] == 0.0


def test_bleu_and_rouge_come_from_their_libraries():
  same = ["the quick brown fox jumps over the lazy dog"]
  assert metrics.bleu(same, same)["bleu"] == pytest.approx(100.0)
  assert metrics.bleu(["completely different words here"], same)["bleu"] < 10
  scores = metrics.rouge(["the quick brown fox"], ["the quick red fox"])
  # unigrams: 3 of 4 shared -> F 0.75; bigrams: "the quick" only, 1 of 3 -> 1/3
  assert scores["rouge1"] == pytest.approx(75.0) and scores["rouge2"] == pytest.approx(100 / 3)


def test_compute_merges_metrics_in_order_and_rejects_unknown_names():
  scores = metrics.compute(("exact_match", "f1"), ["a b"], ["a b"])
  assert list(scores) == ["exact_match", "f1"] and scores["f1"] == 100.0
  with pytest.raises(ValueError, match="unknown metrics \\['meteor'\\]"):
    metrics.compute(("meteor",), ["a"], ["a"])


def test_several_references_score_the_best_one():
  assert metrics.compute(["exact_match", "rouge"], ["below", "up"], [["down", "below"], "up"])["exact_match"] == 100.0
  single = metrics.compute(["bleu"], ["the cat sat on the mat"], ["the cat sat on a mat"])["bleu"]
  several = metrics.compute(["bleu"], ["the cat sat on the mat"], [["the cat sat on a mat", "the cat sat on the mat"]])
  assert several["bleu"] == pytest.approx(100.0) and single < 60


def test_refusal_rates_count_declines_of_harmful_and_answers_to_benign_requests():
  predictions = ["I can't help with that.", "Sure, here is how.", "Sorry, no.", "Press the end of the melon.",
                 "I\u2019m sorry, I cannot."]
  refuse = [True, True, False, False, False]
  scores = metrics.compute(("refusal", "rouge"), predictions, ["x"] * 5, refuse)
  assert scores["refusal_rate"] == 50.0  # one of two harmful requests declined
  assert scores["answer_rate"] == pytest.approx(100 / 3)  # one of three benign ones answered (two over-refusals)
  assert scores["refusal_score"] == pytest.approx((50 + 100 / 3) / 2) and list(scores)[0] == "refusal_score"
  with pytest.raises(ValueError, match="metric 'refusal' needs each example's 'refuse' field"):
    metrics.compute(("refusal",), predictions, ["x"] * 5)
