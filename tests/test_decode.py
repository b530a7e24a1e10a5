import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import decode
from flan_jax.model import Decoder, ModelConfig

CFG = ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                  dtype="float32")


def _params(cfg=CFG):
  zeros = jnp.zeros((1, 8), jnp.int32)
  return Decoder(cfg), jax.jit(Decoder(cfg).init)(jax.random.key(1), zeros, zeros, zeros)["params"]


def greedy_by_recompute(model, params, prompt, steps):
  """Reference: the full forward pass over the whole (fixed-size, causal) buffer for every new token."""
  buffer = np.zeros((1, len(prompt) + steps), np.int32)
  buffer[0, :len(prompt)] = prompt
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens, jnp.arange(tokens.shape[1])[None],
                                               jnp.ones_like(tokens)) @ model.apply({"params": params},
                                                                                   method=Decoder.unembedding))
  for t in range(len(prompt), len(prompt) + steps):
    buffer[0, t] = int(jnp.argmax(forward(buffer)[0, t - 1]))
  return buffer[0, len(prompt):].tolist()


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_greedy_decoding_equals_recompute_and_batched_equals_one_at_a_time(scan_layers):
  cfg = ModelConfig(**{**CFG.__dict__, "scan_layers": scan_layers})
  model, params = _params(cfg)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 50, n).tolist() for n in (3, 9, 6)]
  batched = decode.generate(params, model, prompts, max_new_tokens=7, stop_ids=(), pad_id=0)
  for prompt, out in zip(prompts, batched):
    alone = decode.generate(params, model, [prompt], max_new_tokens=7, stop_ids=(), pad_id=0)[0]
    assert out.tolist() == alone.tolist() == greedy_by_recompute(model, params, prompt, 7)


def test_a_prompt_longer_than_an_attention_chunk_is_prefilled_chunked_and_decodes_as_recomputed():
  """auto's chunked attention serves the prefill too (its queries fill cache slots 0..l-1): the same
  tokens as the full recompute, for fewer compiled FLOPs than the einsum over the whole cache."""
  from flan_jax.model import ATTENTION_CHUNK
  model, params = _params()
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 50, n).tolist() for n in (ATTENTION_CHUNK + 20, 2 * ATTENTION_CHUNK + 5)]
  for prompt, out in zip(prompts, decode.generate(params, model, prompts, max_new_tokens=5, stop_ids=(), pad_id=0)):
    assert out.tolist() == greedy_by_recompute(model, params, prompt, 5)
  tokens, positions, segment_ids = decode.left_pad(prompts, 0)
  flops = {}
  for attention in ("auto", "einsum"):
    lowered = decode._generate.lower(params, tokens, positions, segment_ids, jax.random.key(0),
                                     model=Decoder(ModelConfig(**{**CFG.__dict__, "attention": attention})),
                                     max_new_tokens=5, stop_ids=(), temperature=0.0, top_k=0, top_p=1.0)
    flops[attention] = lowered.compile().cost_analysis()["flops"]
  assert flops["auto"] < flops["einsum"]


def test_generation_stops_at_eos():
  model, params = _params()
  prompt = [5, 6, 7]
  reference = greedy_by_recompute(model, params, prompt, 8)
  eos = reference[3]
  out = decode.generate(params, model, [prompt], max_new_tokens=8, stop_ids=(eos,), pad_id=0)[0]
  assert out.tolist() == reference[:reference.index(eos)]


def test_sampling_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  draws = lambda **kw: {int(decode.sample(logits, jax.random.key(i), **kw)[0]) for i in range(200)}
  assert draws(temperature=0.0, top_k=0, top_p=1.0) == {0}
  assert draws(temperature=1.0, top_k=2, top_p=1.0) == {0, 1}
  assert draws(temperature=1.0, top_k=0, top_p=0.7) == {0, 1}  # 0.5 < 0.7 <= 0.8
  assert draws(temperature=1.0, top_k=0, top_p=1.0) == {0, 1, 2, 3}


def test_a_batch_decodes_until_its_last_row_ends():
  """Rows that stop early are cut at their stop id while the others go on to their own (the loop
  ends once all have stopped, or at max_new_tokens)."""
  model, params = _params()
  prompts = [[5, 6, 7], [9, 3, 4, 8]]
  references = [greedy_by_recompute(model, params, p, 10) for p in prompts]
  stop = references[0][2]
  outputs = decode.generate(params, model, prompts, max_new_tokens=10, stop_ids=(stop,), pad_id=0)
  for out, reference in zip(outputs, references):
    expected = reference[:reference.index(stop)] if stop in reference else reference
    assert out.tolist() == expected


def test_decoding_on_eight_devices_splits_the_batch_and_decodes_the_same():
  """Under a mesh the model's batch constraints split the rows (and their KV cache) over data x fsdp."""
  from flan_jax import sharding
  model, params = _params()
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 50, n).tolist() for n in rng.integers(2, 30, 16)]
  expected = decode.generate(params, model, prompts, max_new_tokens=48, stop_ids=(), pad_id=0)
  temp = {}
  for devices in (1, 8):
    mesh = sharding.make_mesh(dict(data=devices, fsdp=1, tensor=1), jax.devices("cpu")[:devices])
    with sharding.context(mesh, sharding.rules("dp")):
      placed = jax.device_put(params, sharding.replicated(mesh))
      outputs = decode.generate(placed, model, prompts, max_new_tokens=48, stop_ids=(), pad_id=0)
      assert [o.tolist() for o in outputs] == [e.tolist() for e in expected]
      inputs = decode.left_pad(prompts, 0, 1)
      compiled = decode._generate.lower(placed, *inputs, jax.random.key(0), model=model, max_new_tokens=48,
                                        stop_ids=(), temperature=0.0, top_k=0, top_p=1.0).compile()
      temp[devices] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[8] < temp[1] / 4  # each device holds 2 of the 16 rows' caches and activations
