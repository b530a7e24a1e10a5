"""The run's tokenizer: trained once and cached, never on held-out clusters, on a corpus a sweep
can fix."""

import re

import pytest

from flan_jax.data import tasks, tokenizer as tokenizer_lib, vocab


def test_trained_tokenizer_is_cached(tiny_config, tmp_path, monkeypatch):
  first = vocab.get_tokenizer(tiny_config.data, str(tmp_path))
  monkeypatch.setattr(tokenizer_lib, "train", lambda *a, **k: pytest.fail("trained again instead of loading"))
  second = vocab.get_tokenizer(tiny_config.data, str(tmp_path))
  assert second.path == first.path
  assert second.encode("the red cat") == first.encode("the red cat")


def test_the_tokenizer_never_reads_held_out_clusters_and_a_sweep_can_fix_its_corpus(tiny_config, monkeypatch):
  data = tiny_config.data
  corpus = {t.cluster for t in vocab.tokenizer_tasks(data)}
  assert not corpus & {"nli", "paraphrase"} and "sentiment" in corpus  # NLI held out, paraphrase excluded with it
  captured = []
  monkeypatch.setattr(tokenizer_lib, "train", lambda texts, path, vocab_size: captured.append(texts))
  vocab.get_tokenizer(data, "/tmp/unused")
  nli_phrases = {piece for task in tasks.by_cluster("nli") for t in task.templates
                 for piece in re.split(r"\{\w+\}", t.prompt) if len(piece.strip()) >= 15}
  assert nli_phrases and captured[0] and not any(p in text for text in captured[0] for p in nli_phrases)
  spec = vocab.tokenizer_spec(data)
  data.held_out_clusters = ("sentiment",)  # another run of a held-out sweep: another corpus...
  assert vocab.tokenizer_spec(data) != spec
  data.tokenizer.held_out_clusters = ("nli",)  # ...unless the config fixes it
  data.template.max_templates, data.template.style = 1, "none"  # template ablations render the corpus alike
  assert vocab.tokenizer_spec(data) == spec
  data.tokenizer.held_out_clusters = tuple(sorted({t.cluster for t in vocab.tokenizer_tasks(data)} | {"nli"}))
  with pytest.raises(ValueError, match="data.tokenizer.held_out_clusters=.* leaves no task"):
    vocab.tokenizer_tasks(data)
