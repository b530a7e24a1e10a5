import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import model as model_lib
from flan_jax.data import packing
from flan_jax.loss import fused_cross_entropy
from flan_jax.model import Decoder, ModelConfig, matmul, train_flops_per_token

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                  dtype="float32")


def _init(cfg=CFG, length=16):
  model = Decoder(cfg)
  zeros = jnp.zeros((1, length), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), zeros, zeros, zeros)
  return model, params


def _run(model, params, tokens, positions, segments):
  return np.asarray(jax.jit(model.apply)(params, jnp.asarray([tokens]), jnp.asarray([positions]),
                                         jnp.asarray([segments]))[0])


def test_packed_row_equals_each_example_alone():
  model, params = _init()
  rng = np.random.default_rng(0)
  a, b = rng.integers(1, 64, 5), rng.integers(1, 64, 7)
  row = np.concatenate([a, b, np.zeros(4, int)])
  positions = np.concatenate([np.arange(5), np.arange(7), np.zeros(4, int)])
  segments = np.array([1] * 5 + [2] * 7 + [0] * 4)
  packed = _run(model, params, row, positions, segments)
  alone_a = _run(model, params, np.pad(a, (0, 11)), np.pad(np.arange(5), (0, 11)), [1] * 5 + [0] * 11)
  alone_b = _run(model, params, np.pad(b, (0, 9)), np.pad(np.arange(7), (0, 9)), [1] * 7 + [0] * 9)
  np.testing.assert_allclose(packed[:5], alone_a[:5], atol=1e-5)
  np.testing.assert_allclose(packed[5:12], alone_b[:7], atol=1e-5)


@pytest.mark.parametrize("sliding_window", [0, 4])
def test_options_sharing_a_prompt_through_context_ids_equal_each_option_after_it_alone(sliding_window):
  """[prompt | option 1 | option 2] in one row, the options seeing the prompt (context_ids) but not each
  other, and positions (so the window) counting on from the prompt in both."""
  model, params = _init(ModelConfig(**{**CFG.__dict__, "sliding_window": sliding_window}))
  rng = np.random.default_rng(1)
  prompt, first, second = rng.integers(1, 64, 6), rng.integers(1, 64, 3), rng.integers(1, 64, 4)
  row = np.concatenate([prompt, first, second, [0, 0, 0]])
  positions = np.concatenate([np.arange(6), 6 + np.arange(3), 6 + np.arange(4), [0, 0, 0]])
  segments = np.array([1] * 6 + [2] * 3 + [3] * 4 + [0] * 3)
  context = np.array([0] * 6 + [1] * 7 + [0] * 3)
  shared = np.asarray(jax.jit(model.apply)(params, *(jnp.asarray([a]) for a in (row, positions, segments)),
                                           context_ids=jnp.asarray([context]))[0])
  for option, columns in ((first, slice(6, 9)), (second, slice(9, 13))):
    n = 6 + len(option)
    alone = _run(model, params, np.pad(np.concatenate([prompt, option]), (0, 16 - n)),
                 np.pad(np.arange(n), (0, 16 - n)), [1] * n + [0] * (16 - n))
    np.testing.assert_allclose(shared[columns], alone[6:n], atol=1e-5)
  np.testing.assert_allclose(shared[:6], alone[:6], atol=1e-5)


def test_rows_longer_than_an_attention_chunk_attend_chunked_by_default_as_the_einsum_would():
  """auto on CPU: the chunked einsum for rows over ATTENTION_CHUNK slots, the einsum for shorter ones,
  and a kernel asked for gives way to it where the mask says more than segment ids. The decoder's
  output is the einsum's, for packed rows and shared prompts (context_ids) alike, for fewer FLOPs."""
  from flan_jax.model import ATTENTION_CHUNK, attention_implementation
  assert CFG.attention == "auto"
  assert attention_implementation(CFG, ATTENTION_CHUNK) == "einsum"
  assert attention_implementation(CFG, ATTENTION_CHUNK + 1) == "chunked"
  cudnn = ModelConfig(**{**CFG.__dict__, "attention": "cudnn"})
  assert attention_implementation(cudnn, 3 * ATTENTION_CHUNK, kernels=False) == "chunked"
  sizes = (150, 60, 80, 10)  # a prompt, two options after it, padding: 300 slots, three chunks
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 64, (1, sum(sizes))), jnp.int32)
  segments = jnp.asarray([np.repeat([1, 2, 3, 0], sizes)], jnp.int32)
  positions = jnp.asarray([np.concatenate([np.arange(150), 150 + np.arange(60), 150 + np.arange(80), [0] * 10])])
  context = jnp.asarray([np.repeat([0, 1, 1, 0], sizes)], jnp.int32)
  model, params = _init(CFG)
  einsum = Decoder(ModelConfig(**{**CFG.__dict__, "attention": "einsum"}))
  for context_ids in (None, context):
    run = {m: jax.jit(lambda p, m=m: m.apply(p, tokens, positions, segments, context_ids=context_ids))
           for m in (model, einsum)}
    np.testing.assert_allclose(run[model](params), run[einsum](params), atol=1e-5)
    flops = {m: f.lower(params).compile().cost_analysis()["flops"] for m, f in run.items()}
    assert flops[model] < flops[einsum]


def test_changing_one_example_changes_no_other():
  model, params = _init()
  row = np.arange(1, 17)
  positions = np.concatenate([np.arange(6), np.arange(6), np.arange(4)])
  segments = np.array([1] * 6 + [2] * 6 + [3] * 4)
  before = _run(model, params, row, positions, segments)
  changed = row.copy()
  changed[6:12] = 7
  after = _run(model, params, changed, positions, segments)
  np.testing.assert_array_equal(before[:6], after[:6])
  np.testing.assert_array_equal(before[12:], after[12:])
  assert not np.allclose(before[6:12], after[6:12])


def test_attention_is_causal():
  model, params = _init()
  row, positions, segments = np.arange(1, 17), np.arange(16), np.ones(16, int)
  before = _run(model, params, row, positions, segments)
  changed = row.copy()
  changed[10] = 63
  after = _run(model, params, changed, positions, segments)
  np.testing.assert_array_equal(before[:10], after[:10])
  assert not np.allclose(before[10:], after[10:])


def test_bf16_compute_stays_close_to_f32_and_params_stay_f32():
  model32, params = _init()
  model16 = Decoder(ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16"}))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  row, positions, segments = np.arange(1, 17), np.arange(16), np.ones(16, int)
  h32 = _run(model32, params, row, positions, segments)
  h16 = _run(model16, params, row, positions, segments)
  assert h16.dtype == np.float32
  assert np.linalg.norm(h16 - h32) / np.linalg.norm(h32) < 2e-2


@pytest.mark.parametrize("normalize", [False, True])
def test_tied_embeddings(normalize):
  model, params = _init(ModelConfig(**{**CFG.__dict__, "tie_embeddings": True, "normalize_tied_logits": normalize}))
  assert "unembed" not in params["params"]
  unembed = model.apply(params, method=Decoder.unembedding)
  scale = CFG.d_model ** -0.5 if normalize else 1.0
  np.testing.assert_allclose(unembed, params["params"]["embedding"].value.T * scale)


def test_config_errors():
  with pytest.raises(ValueError, match="num_heads=4 is not a multiple of num_kv_heads=3"):
    ModelConfig(**{**CFG.__dict__, "num_kv_heads": 3})
  with pytest.raises(ValueError, match="activation='relu'"):
    ModelConfig(**{**CFG.__dict__, "activation": "relu"})
  with pytest.raises(ValueError, match=r"lora_targets: \['q_proj'\]"):
    ModelConfig(**{**CFG.__dict__, "lora_rank": 4, "lora_targets": ["q_proj"]})


def test_sliding_window_sees_only_recent_positions():
  model, params = _init(ModelConfig(**{**CFG.__dict__, "sliding_window": 4, "num_layers": 1}))
  row, positions, segments = np.arange(1, 17), np.arange(16), np.ones(16, int)
  before = _run(model, params, row, positions, segments)
  changed = row.copy()
  changed[5] = 63
  after = _run(model, params, changed, positions, segments)
  np.testing.assert_array_equal(before[:5], after[:5])
  assert not np.allclose(before[5:9], after[5:9])  # positions 5..8 have 5 within their window of 4
  np.testing.assert_array_equal(before[9:], after[9:])  # one layer: position 9 onward cannot see 5


def test_lora_adds_adapters_that_start_as_the_identity():
  lora = ModelConfig(**{**CFG.__dict__, "lora_rank": 4, "lora_targets": ("wq", "wo", "w_down")})
  model, params = _init(lora)
  block = nn.unbox(params)["params"]["block_0"]
  assert block["attention"]["wq_lora_a"].shape == (32, 4) and block["attention"]["wq_lora_b"].shape == (4, 4, 8)
  assert block["attention"]["wo_lora_a"].shape == (4, 8, 4) and block["attention"]["wo_lora_b"].shape == (4, 32)
  assert block["mlp"]["w_down_lora_a"].shape == (64, 4) and "w_up_lora_a" not in block["mlp"]
  row, positions, segments = np.arange(1, 17), np.arange(16), np.ones(16, int)
  strip = lambda tree: {k: strip(v) if isinstance(v, dict) else v for k, v in tree.items() if "_lora_" not in k}
  adapted = _run(model, params, row, positions, segments)
  np.testing.assert_allclose(adapted, _run(Decoder(CFG), {"params": strip(nn.unbox(params)["params"])}, row,
                                           positions, segments), atol=1e-6)
  # A non-zero B changes the output.
  block["attention"]["wq_lora_b"] = jnp.ones_like(block["attention"]["wq_lora_b"])
  changed = {"params": nn.unbox(params)["params"] | {"block_0": block}}
  assert not np.allclose(_run(model, changed, row, positions, segments), adapted)


def _stacked(tree):
  """{"block_0": t0, "block_1": t1, ...} -> {"blocks": t0, t1, ... stacked along a leading layers axis}."""
  rest = {k: v for k, v in tree.items() if not k.startswith("block_")}
  blocks = [tree[f"block_{i}"] for i in range(CFG.num_layers)]
  return {**rest, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}


@pytest.mark.parametrize("remat, scan", [("full", False), ("save_projections", True), ("none", True)])
def test_remat_and_scanned_layers_compute_the_same_function_and_gradients(remat, scan):
  model, params = _init()
  other = Decoder(ModelConfig(**{**CFG.__dict__, "remat": remat, "scan_layers": scan}))
  params = nn.unbox(params)["params"]
  other_params = _stacked(params) if scan else params
  abstract = jax.eval_shape(other.init, jax.random.key(0), *[jnp.zeros((1, 16), jnp.int32)] * 3)["params"]
  assert jax.tree.map(jnp.shape, nn.unbox(abstract)) == jax.tree.map(jnp.shape, other_params)
  row = jnp.asarray([np.arange(1, 17)])
  positions, segments = jnp.asarray([np.arange(16)]), jnp.ones((1, 16), jnp.int32)
  # A random projection of the final hidden states: the sum of their squares, normalised as they are, is
  # nearly flat in every weight below the final norm, whose gradients would then be rounding noise.
  probe = jax.random.normal(jax.random.key(1), (1, 16, CFG.d_model))
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.apply({"params": p}, row, positions, segments) * probe)))
  value, grads = loss(model)(params)
  other_value, other_grads = loss(other)(other_params)
  np.testing.assert_allclose(other_value, value, rtol=1e-5)
  grads = _stacked(grads) if scan else grads
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), other_grads, grads)


def test_backward_matmuls_take_bf16_operands():
  """The custom VJP keeps the backward pass in bf16 x bf16 -> f32 matmuls (autodiff alone promotes to f32)."""
  x, w = jnp.ones((8, 16)), jnp.ones((16, 4))
  jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: matmul("nd,dv->nv", x, w, "bfloat16").sum(), argnums=(0, 1)))(x, w)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  dots += [e for eq in jaxpr.jaxpr.eqns for sub in jax.core.jaxprs_in_params(eq.params) for e in sub.eqns
           if e.primitive.name == "dot_general"]
  assert len(dots) == 3  # forward, d/dx, d/dw
  assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
  assert all(e.outvars[0].aval.dtype == jnp.float32 for e in dots)


def test_train_flops_per_token_counts_matmul_parameters_and_causal_attention():
  cfg = ModelConfig(vocab_size=100, d_model=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2, mlp_dim=16)
  _, params = _init(cfg)
  matmul_params = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(nn.unbox(params))
                      if "norm" not in jax.tree_util.keystr(path) and "embedding" not in jax.tree_util.keystr(path))
  assert matmul_params == 2 * (8 * 2 * (4 + 2 + 2 + 4) // 1 + 3 * 8 * 16) + 8 * 100
  assert train_flops_per_token(cfg, seq_len=10) == 6 * matmul_params + 6 * 2 * 10 * 4 * 2


def test_train_flops_per_token_matches_xlas_count_of_the_compiled_train_step():
  """XLA's cost_analysis counts every multiply-add of the compiled gradient; it computes attention
  scores for the masked-out half too, which the model FLOPs (MaxText's count) leave out."""
  cfg = ModelConfig(vocab_size=512, d_model=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                    mlp_dim=1024, dtype="float32")
  model, batch, length = Decoder(cfg), 4, 128
  tokens = jnp.ones((batch, length), jnp.int32)
  params = model.init(jax.random.key(0), tokens, tokens, tokens)["params"]

  def loss(params):
    hidden = model.apply({"params": params}, tokens, jnp.broadcast_to(jnp.arange(length), tokens.shape), tokens)
    unembedding = model.apply({"params": params}, method=Decoder.unembedding)
    # One chunk: cost_analysis counts a loop's body once.
    return fused_cross_entropy(hidden, unembedding, tokens, jnp.ones(tokens.shape), chunk_len=length,
                               dtype="float32")[0]

  xla_flops = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()["flops"]
  masked_half = 6 * cfg.num_layers * length * cfg.num_heads * cfg.head_dim
  expected = (train_flops_per_token(cfg, length) + masked_half) * batch * length
  assert 1.0 <= xla_flops / expected < 1.03  # the rest: norms, rotary, softmax, the loss's elementwise work


def _packed_attention_inputs(sliding_window):
  cfg = ModelConfig(**{**CFG.__dict__, "head_dim": 16, "sliding_window": sliding_window})
  keys = jax.random.split(jax.random.key(0), 3)
  batch, length = 2, 256
  q = jax.random.normal(keys[0], (batch, length, cfg.num_heads, cfg.head_dim))
  k, v = (jax.random.normal(key, (batch, length, cfg.num_kv_heads, cfg.head_dim)) for key in keys[1:])
  segment_ids = np.zeros((batch, length), np.int32)
  segment_ids[0, :100], segment_ids[0, 100:250], segment_ids[1] = 1, 2, 1  # two examples and padding; one
  positions = np.concatenate([np.arange(100), np.arange(156)])[None].repeat(batch, 0)
  positions[1] = np.arange(length)
  return cfg, (q, k, v), jnp.asarray(segment_ids), jnp.asarray(positions)


@pytest.mark.parametrize("sliding_window", [0, 24])
@pytest.mark.parametrize("implementation", ["chunked", "xla", "splash"])
def test_attention_implementations_match_the_einsum_on_packed_rows_forward_and_backward(implementation,
                                                                                      sliding_window):
  """Splash is TPU-only: here its Pallas kernel runs in interpret mode, through the same wrapper. The
  256-slot rows are two chunks of the chunked einsum."""
  from flan_jax import model as model_lib
  cfg, qkv, segment_ids, positions = _packed_attention_inputs(sliding_window)
  mask = model_lib.attention_mask(segment_ids, positions, sliding_window)
  window = (sliding_window - 1, 0) if sliding_window else None
  run = {"chunked": lambda q, k, v: model_lib.attend("chunked", q, k, v, mask, segment_ids, cfg),
         "xla": lambda q, k, v: model_lib.attend("xla", q, k, v, mask, segment_ids, cfg),
         "splash": lambda q, k, v: model_lib._splash(q, k, v, segment_ids, cfg, window, interpret=True)}[implementation]
  reference = lambda q, k, v: model_lib.attend("einsum", q, k, v, mask, segment_ids, cfg)
  np.testing.assert_allclose(run(*qkv), reference(*qkv), atol=1e-5)
  loss = lambda fn: jax.grad(lambda *qkv: jnp.sum(jnp.sin(fn(*qkv))), argnums=(0, 1, 2))(*qkv)
  for ours, expected in zip(loss(run), loss(reference)):
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_the_attention_switch_reaches_every_block_and_kernels_are_refused_where_they_cannot_run():
  cfg = ModelConfig(**{**CFG.__dict__, "attention": "xla"})
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 64, (2, 16)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(16), tokens.shape)
  segment_ids = jnp.asarray([[1] * 10 + [2] * 6, [1] * 16], jnp.int32)
  reference_model, params = _init(CFG)
  ours = Decoder(cfg).apply(params, tokens, positions, segment_ids)
  np.testing.assert_allclose(ours, reference_model.apply(params, tokens, positions, segment_ids), atol=1e-5)
  for kernel, device in (("cudnn", "GPU"), ("splash", "TPU")):
    with pytest.raises(ValueError, match=rf"model.attention='{kernel}' runs on {device} only; this run compiles for cpu"):
      Decoder(ModelConfig(**{**CFG.__dict__, "attention": kernel})).apply(params, tokens, positions, segment_ids)
  with pytest.raises(ValueError, match="model.attention='flash': choose from auto, einsum, chunked, xla, cudnn, splash"):
    ModelConfig(**{**CFG.__dict__, "attention": "flash"})


def test_segment_runs_give_cudnns_packed_layout_the_mask_of_packed_rows():
  """Offsets and lengths of each row's runs (examples, then padding), unused entries -1; attending
  causally within a run is the model's mask of packed rows (padding attends only to padding)."""
  rows = np.zeros((3, 12), np.int32)
  rows[0, :5], rows[0, 5:9] = 1, 2  # two examples and padding
  rows[1, :] = 1  # one example filling the row
  rows[2, :] = np.repeat(np.arange(1, 7), 2)  # six examples of two tokens
  offsets, lengths = (np.asarray(a) for a in model_lib.segment_runs(jnp.asarray(rows)))
  assert offsets.shape == (3, packing.MAX_SEGMENTS + 1) and lengths.shape == (3, packing.MAX_SEGMENTS)
  np.testing.assert_array_equal(offsets[0, :4], [0, 5, 9, -1])
  np.testing.assert_array_equal(lengths[0, :4], [5, 4, 3, -1])
  np.testing.assert_array_equal(offsets[1, :2], [0, -1])
  np.testing.assert_array_equal(lengths[2, :7], [2] * 6 + [-1])
  run = np.full(rows.shape, -1)
  for r in range(3):
    for start, n in zip(offsets[r], lengths[r]):
      if n > 0:
        run[r, start:start + n] = start
  causal_in_run = (run[:, :, None] == run[:, None, :]) & np.tril(np.ones((12, 12), bool))
  positions = np.zeros_like(rows)
  np.testing.assert_array_equal(causal_in_run | ~(rows[:, :, None] > 0),
                                np.asarray(model_lib.attention_mask(jnp.asarray(rows), positions))
                                | ~(rows[:, :, None] > 0))


def test_cudnn_attention_lowers_for_gpus_with_packed_rows_as_offsets_and_no_dense_mask(monkeypatch):
  """The train step's forward and backward with attention=cudnn, lowered for CUDA on this CPU (JAX's
  checks for a cuDNN and a Hopper GPU answered as a Hopper host would): both kernels take the runs'
  offsets and lengths, and no [b, 1, l, l] mask or bias is built."""
  monkeypatch.setattr(model_lib.cudnn_attention, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(model_lib.cudnn_attention, "check_compute_capability", lambda capability: True)
  cfg = ModelConfig(**{**CFG.__dict__, "attention": "cudnn", "platform": "gpu", "dtype": "bfloat16",
                       "head_dim": 16, "sliding_window": 64})
  model, length = Decoder(cfg), 128
  tokens = jax.ShapeDtypeStruct((2, length), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens, tokens, tokens)

  def loss(params, tokens, segment_ids):
    return model.apply(params, tokens, tokens, segment_ids).sum()

  text = jax.jit(jax.grad(loss)).trace(params, tokens, tokens).lower(lowering_platforms=("cuda",)).as_text()
  runs = f"tensor<2x{packing.MAX_SEGMENTS + 1}xi32>"
  for kernel in ("__cudnn$fmhaSoftmax(", "__cudnn$fmhaSoftmaxBackward("):
    calls = [line for line in text.splitlines() if kernel in line]
    assert len(calls) == cfg.num_layers and all(runs in call for call in calls), kernel
  assert f"2x1x{length}x{length}" not in text and f"2x{length}x{length}" not in text
