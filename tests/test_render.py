"""Rendering: few-shot and chain-of-thought prompts, the format, preamble and input mixes drawn at
their rates, and template settings that cannot be drawn from, named by key."""

import collections
import json
import re

import numpy as np
import pytest

from flan_jax.data import pipeline, render, templates


def test_few_shot_and_chain_of_thought_render(tiny_config, tokenizer):
  data = tiny_config.data
  data.mixture = ("mini_arithmetic",)
  data.held_out_clusters = ()
  data.template.num_shots = 2
  data.template.prompt_mix = dict(few_shot=1.0, chain_of_thought=1.0)
  data.template.inverted = False
  mix = pipeline.resolve_mixture(data)
  renderer = render.Renderer(data, tokenizer, mix.train, render.Stats())
  records = pipeline.mixed_records(mix, seed=0)
  rendered = [renderer.render(records[i], np.random.default_rng(i)) for i in range(40)]
  expressions = lambda text: len(re.findall(r"\d+ [-+x] \d+", text))
  few_shot = [p for ((_, p), _), _ in rendered if expressions(p) == 3]  # two exemplars and the query
  chain_of_thought = [(p, r) for ((_, p), (_, r)), _ in rendered if expressions(p) == 1]
  assert len(few_shot) + len(chain_of_thought) == 40 and 10 < len(few_shot) < 30
  assert all(p.endswith(templates.COT_TRIGGER) and "So the answer is" in r for p, r in chain_of_thought)
  assert not any(templates.COT_TRIGGER in p for p in few_shot)
  assert renderer.stats.renderings == {"prompt:few_shot": len(few_shot), "format:flan": 40,
                                       "prompt:chain_of_thought": len(chain_of_thought)}


def test_format_preamble_and_input_mixes_are_drawn_at_their_rates(tiny_config, tokenizer, tmp_path):
  rows = [{"instruction": f"Say number {i}.", "input": f"context {i}", "output": str(i)} for i in range(300)]
  (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  data = tiny_config.data
  data.mixture, data.held_out_clusters = (), ()
  data.local_tasks = ({"name": "mix_rows", "path": str(tmp_path / "rows.jsonl"), "format": "alpaca", "cluster": "c"},)
  data.template.format_mix = {"alpaca": 3.0, "flan": 1.0}
  data.template.preamble_rate, data.template.omit_input_rate = 0.25, 0.5
  mix = pipeline.resolve_mixture(data)
  renderer = render.Renderer(data, tokenizer, mix.train, render.Stats())
  records = pipeline.mixed_records(mix, seed=0)
  rendered = [renderer.render(records[i], np.random.default_rng(i)) for i in range(2000)]
  formats = collections.Counter(fmt for _, fmt in rendered)
  assert abs(formats["alpaca"] / 2000 - 0.75) < 0.04 and formats["alpaca"] + formats["flan"] == 2000
  preambles = [turns[0][1] for turns, _ in rendered if turns[0][0] == "system"]
  assert abs(len(preambles) / 2000 - 0.25) < 0.03 and set(preambles) <= set(templates.PREAMBLES)
  joined = [turns for turns, _ in rendered if not any(role == "input" for role, _ in turns)]
  assert abs(len(joined) / 2000 - 0.5) < 0.04
  text = templates.to_text(next((t, f) for t, f in rendered if f == "alpaca" and t in joined)[0], "alpaca")
  assert "### Input:" not in text and "\n\ncontext " in text
  counts = renderer.stats.renderings
  assert counts["format:alpaca"] == formats["alpaca"] and counts["preamble"] == len(preambles)
  assert counts["input_turn"] == 2000 and counts["input_joined"] == len(joined)


@pytest.mark.parametrize("key, value, message", [
    ("prompt_mix", {"zero_shot": 0.0}, r"data.template.prompt_mix=.*not all 0"),
    ("prompt_mix", {"one_shot": 1.0}, r"data.template.prompt_mix=.*one_shot"),
    ("format_mix", {"markdown": 1.0}, r"data.template.format_mix: unknown format 'markdown'"),
    ("preamble_rate", 1.5, r"data.template.preamble_rate=1.5 is not in \[0, 1\]"),
    ("style", "bare", r"data.template.style='bare'"),
])
def test_template_mixes_that_cannot_be_drawn_name_the_key(tiny_config, key, value, message):
  tiny_config.data.template[key] = value
  with pytest.raises(ValueError, match=message):
    render.Renderer(tiny_config.data, None, [], render.Stats())


def test_few_shot_needs_shots(tiny_config):
  tiny_config.data.template.prompt_mix = {"few_shot": 1.0}
  tiny_config.data.template.num_shots = 0
  with pytest.raises(ValueError, match="prompt_mix.few_shot > 0 needs data.template.num_shots >= 1"):
    render.Renderer(tiny_config.data, None, [], render.Stats())


def test_a_preference_pair_renders_with_its_final_answers_alone_weighted(tiny_config, tokenizer, tmp_path):
  said = lambda role, text: {"role": role, "content": text}
  history = [said("user", "Hi there"), said("assistant", "Hello, how can I help"), said("user", "Tell a joke")]
  rows = [{"chosen": [*history, said("assistant", "A pun about cats")],
           "rejected": [*history, said("assistant", "No")]}]
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  data = tiny_config.data
  data.mixture, data.held_out_clusters = (), ()
  data.local_tasks = ({"name": "render_pairs", "path": str(tmp_path / "pairs.jsonl"), "format": "preference",
                       "cluster": "c"},)
  mix = pipeline.resolve_mixture(data)
  stats = render.Stats()
  features = render.Renderer(data, tokenizer, mix.train, stats)(pipeline.mixed_records(mix, seed=0)[0],
                                                                   np.random.default_rng(0))
  chosen, rejected = (features["preference"] == 1), (features["preference"] == 2)
  weighted = lambda part: tokenizer.decode(features["targets"][part & (features["loss_weights"] > 0)].tolist())
  assert "A pun about cats" in weighted(chosen) and "Hello" not in weighted(chosen)
  assert weighted(rejected).strip().startswith("No") and "Hello" not in weighted(rejected)
  np.testing.assert_array_equal(features["inputs"][chosen][:10], features["inputs"][rejected][:10])
  assert "Hello, how can I help" in tokenizer.decode(features["inputs"][rejected].tolist())
