"""A Llama-style decoder (Flax linen) whose attention respects packed rows.

RMSNorm, rotary embeddings from the packed `positions`, grouped-query attention
that is causal and confined to one segment, SwiGLU MLP, optional tied
embeddings; with the variants the Hugging Face families need (see convert.py):
attention biases (Qwen 2), a sliding attention window (Mistral), Llama 3's rope
scaling, GeGLU and scaled embeddings (Gemma). Low-rank adapters (LoRA) can be
added to chosen projections (see lora.py). Matmuls take operands in `dtype` (by default bf16 where the
hardware multiplies it faster than f32, see hardware.compute_dtype) and accumulate in f32, forward and backward; parameters are kept in `param_dtype`. Every
parameter and the key activations carry logical axis names, which the sharding
rules (sharding.py) map onto the mesh. Blocks can be rematerialised and scanned.

The model returns final hidden states, not logits: the loss projects onto the
vocabulary chunk by chunk (see loss.py), so `[batch, length, vocab]` is never
built. `Decoder.unembedding` gives the `[embed, vocab]` matrix for that.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from flan_jax import hardware
from flan_jax.data import packing
from flan_jax.sharding import BATCH, BATCH_AXES, EMBED, HEAD_DIM, HEADS, KV_HEADS, LAYERS, LENGTH, MLP, VOCAB

# What a rematerialised block keeps for the backward pass: nothing but its input
# ("full"), or also the outputs of its weight matmuls ("save_projections").
ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}
PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

ATTENTION_IMPLEMENTATIONS = ("einsum", "chunked", "xla", "cudnn", "splash")
ATTENTION_CHUNK = 128  # query slots per chunk of the chunked einsum (of 64, 128, 256 the fastest on CPU)

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_projections": jax.checkpoint_policies.save_only_these_names("projection"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  # Llama 3.1's rope scaling ("llama3" in Hugging Face configs); factor 1: none.
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  norm_eps: float = 1e-6
  activation: str = "silu"  # silu (SwiGLU) | gelu_tanh (GeGLU, Gemma)
  qkv_bias: bool = False  # biases on the query/key/value projections (Qwen 2)
  sliding_window: int = 0  # a token sees at most this many positions back, itself included (0: all)
  tie_embeddings: bool = False
  embed_scale: bool = False  # embedding lookups times sqrt(d_model) (Gemma)
  # Tied logits divided by sqrt(d_model), so initial logits have unit variance (T5; our own presets).
  # Pretrained checkpoints tie without it.
  normalize_tied_logits: bool = False
  lora_rank: int = 0  # 0: no adapters
  lora_alpha: float = 16.0  # adapter outputs are scaled by alpha / rank
  lora_dropout: float = 0.0  # on adapter inputs, when a "dropout" rng is given (training)
  lora_targets: tuple = ("wq", "wk", "wv", "wo")  # among wq wk wv wo w_gate w_up w_down
  attention: str = "auto"  # auto | einsum (the reference) | chunked | xla | cudnn (GPU) | splash (TPU); see attend()
  dtype: str = "auto"  # matmul operands: auto (hardware.compute_dtype) | bfloat16 | float32
  # The platform compiled for (cpu | gpu | tpu): what `auto` choices follow; empty: the devices of the mesh
  # in context (sharding.context), else this process's. Set to compile for another (jax.export's platforms).
  platform: str = ""
  param_dtype: str = "float32"
  remat: str = "none"  # none | full | save_projections
  scan_layers: bool = False  # one compiled block applied num_layers times (faster compiles)

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.remat != "none" and self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r}: choose from none, {', '.join(REMAT_POLICIES)}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"model.activation={self.activation!r}: choose from {', '.join(ACTIVATIONS)}")
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # a list after a JSON round trip
    if self.platform not in ("", "cpu", "gpu", "tpu"):
      raise ValueError(f"model.platform={self.platform!r}: choose cpu, gpu, tpu or empty (this run's devices)")
    object.__setattr__(self, "dtype", hardware.compute_dtype(self.dtype, self.platform or None))
    if self.attention not in ("auto",) + ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"model.attention={self.attention!r}: choose from auto, {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    unknown = set(self.lora_targets) - set(PROJECTIONS)
    if unknown:
      raise ValueError(f"model.lora_targets: {sorted(unknown)} are not projections; choose from {PROJECTIONS}")


def from_config(model_config) -> "Decoder":
  """The Decoder for a config.model ConfigDict (or dict)."""
  return Decoder(ModelConfig(**model_config))


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Model FLOPs to train on one token, as MaxText counts them (remat recomputation not included):
  6 x matmul parameters (projections, MLP, unembedding; the embedding lookup is free)
  + 6 x layers x seq_len x heads x head_dim for causal attention (QK^T and PV: 4 x seq_len x heads x head_dim
  forward, halved by the causal mask, x3 for forward and backward)."""
  attention = cfg.d_model * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  layer = attention + 3 * cfg.d_model * cfg.mlp_dim
  matmul_params = cfg.num_layers * layer + cfg.d_model * cfg.vocab_size
  return 6.0 * matmul_params + 6.0 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim


def matmul(spec: str, x, w, dtype):
  """einsum("ab,bc->ac"-style `spec`) with operands in `dtype` and f32 accumulation and result.

  The backward matmuls also take `dtype` operands and accumulate in f32. Autodiff
  alone would multiply the f32 cotangent with the bf16 operand, which promotes
  the whole backward pass to f32 matmuls, several times slower on CPU and GPU.
  """
  return _einsum_f32(spec, x.astype(dtype), w.astype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(spec, x, w):
  return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec, x, w):
  return _einsum_f32(spec, x, w), (x, w)


def _einsum_f32_bwd(spec, residuals, g):
  x, w = residuals
  inputs, out = spec.split("->")
  x_axes, w_axes = inputs.split(",")
  g = g.astype(x.dtype)
  dx = jnp.einsum(f"{out},{w_axes}->{x_axes}", g, w, preferred_element_type=jnp.float32)
  dw = jnp.einsum(f"{x_axes},{out}->{w_axes}", x, g, preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


def projection(spec: str, x, w, dtype):
  """A matmul by a weight matrix, named so that remat can choose to keep its output."""
  return checkpoint_name(matmul(spec, x, w, dtype), "projection")


def _param(module: nn.Module, name: str, shape, axes, init, cfg: ModelConfig):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))


class RMSNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    scale = _param(self, "scale", (x.shape[-1],), (EMBED,), nn.initializers.ones, self.cfg)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)
    return x * scale.astype(jnp.float32)


def rope_frequencies(cfg: ModelConfig, half: int):
  """Inverse wavelengths of the rotary pairs; Llama 3.1's scaling, if set, slows the long-wavelength ones
  by rope_scaling_factor and interpolates the middle band (as Hugging Face's "llama3" rope type)."""
  inv_freq = cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if cfg.rope_scaling_factor == 1.0:
    return inv_freq
  wavelen = 2 * jnp.pi / inv_freq
  smooth = ((cfg.rope_original_max_len / wavelen - cfg.rope_low_freq_factor)
            / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor))
  interpolated = (1 - smooth) * inv_freq / cfg.rope_scaling_factor + smooth * inv_freq
  long = wavelen > cfg.rope_original_max_len / cfg.rope_low_freq_factor
  short = wavelen < cfg.rope_original_max_len / cfg.rope_high_freq_factor
  return jnp.where(long, inv_freq / cfg.rope_scaling_factor, jnp.where(short, inv_freq, interpolated))


def rotary_tables(positions, cfg: ModelConfig):
  """(cos, signed sin), each [b, l, 1, head_dim], for the angles of `positions` [b, l]: built once per
  call of the model, for every layer. They are materialised (the barrier): fused into their consumers,
  XLA computes the sines and cosines again for every head and element of q, k and their gradients (a
  tenth of the d512 train step on CPU)."""
  half = cfg.head_dim // 2
  angles = positions[:, :, None, None].astype(jnp.float32) * rope_frequencies(cfg, half)
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  return jax.lax.optimization_barrier((jnp.concatenate([cos, cos], -1), jnp.concatenate([-sin, sin], -1)))


def rotary(x, tables):
  """Rotates pairs (x[i], x[i + d/2]) of `x` [b, l, h, d] by the angles of `tables` (rotary_tables):
  x·cos + (x[d/2:], x[:d/2])·sin, the sine table's first half negated."""
  cos, sin = tables
  half = x.shape[-1] // 2
  return x * cos + jnp.concatenate([x[..., half:], x[..., :half]], axis=-1) * sin


def attention_mask(segment_ids, positions, sliding_window: int = 0, context_ids=None):
  """[b, l, l]: a token sees earlier tokens of its own segment (example) only, and with `context_ids`
  [b, l] also those of the segment its id names (> 0): answer options scored side by side, each seeing
  one shared prompt but not each other. Within `sliding_window` positions, if set; every token sees
  itself."""
  length = segment_ids.shape[1]
  mask = segment_ids[:, :, None] == segment_ids[:, None, :]
  if context_ids is not None:
    mask |= (context_ids[:, :, None] == segment_ids[:, None, :]) & (context_ids[:, :, None] > 0)
  mask &= _causal(jnp.arange(length), jnp.arange(length), 0)[None]
  if sliding_window:
    mask &= positions[:, :, None] - positions[:, None, :] < sliding_window
  return mask


def _causal(query_slots, key_slots, sliding_window: int):
  """[q, k]: key slot at or before the query slot (and less than sliding_window before it, if set).
  Within one example, slots differ as positions do: examples are contiguous in packed rows and caches."""
  distance = query_slots[:, None] - key_slots[None, :]
  return (distance >= 0) & ((distance < sliding_window) if sliding_window else True)


def target_platform(cfg: ModelConfig) -> str:
  """The platform the model is compiled for: model.platform, else that of the mesh in context (a TPU
  topology's, when compiling ahead of time for one), else that of this process's devices."""
  mesh = jax.sharding.get_abstract_mesh()
  return cfg.platform or (mesh.abstract_device.platform if not mesh.empty else jax.devices()[0].platform)


def attention_implementation(cfg: ModelConfig, length: int, kernels: bool = True) -> str:
  """model.attention, with "auto" resolved for the platform compiled for (target_platform): cuDNN's
  flash attention on GPUs when the operands are bf16 and cuDNN can serve the GPU (else, with a log
  line, what other devices get), Splash attention on TPUs when the length is a multiple of its
  128-token blocks, and elsewhere the chunked einsum for rows longer than one chunk (the einsum for
  shorter ones; on CPUs XLA's own composite does the einsum's work, no faster). Without `kernels` (a
  mask that segment ids cannot express: scoring's shared prompts), a kernel gives way to that last
  choice."""
  chosen = cfg.attention
  platform = target_platform(cfg)
  if chosen == "auto" and kernels and platform == "gpu" and cfg.dtype == "bfloat16":
    unsupported = hardware.cudnn_attention_unsupported(cfg.head_dim)
    if unsupported:
      _log_once(f"model.attention=auto: not cuDNN's fused attention ({unsupported}); XLA's instead")
    else:
      chosen = "cudnn"
  if chosen == "auto" and kernels and platform == "tpu" and length % 128 == 0:
    chosen = "splash"
  if chosen == "auto" or (chosen in KERNEL_PLATFORMS and not kernels):
    chosen = "chunked" if length > ATTENTION_CHUNK else "einsum"
  return chosen


KERNEL_PLATFORMS = {"cudnn": "gpu", "splash": "tpu"}


@functools.cache
def _log_once(message: str):
  logging.warning(message)


def attend(implementation: str, q, k, v, mask, segment_ids, cfg: ModelConfig):
  """Softmax attention of q [b, l, heads, d] over k, v [b, s, kv_heads, d] -> [b, l, heads, d] (f32).

  einsum: the reference, scores and probabilities materialised in f32 with `mask` [b, l, s];
  chunked: the same over chunks of queries, each against the keys up to its end (self-attention only);
  xla: jax.nn.dot_product_attention's XLA composite with the same mask;
  cudnn: cuDNN's fused flash attention (GPU), causal and windowed by the kernel, packed rows as
  the runs of `segment_ids` [b, l] (segment_runs); splash: Pallas Splash attention (TPU), causal / local block-sparse masks
  and `segment_ids` [b, l]. A kernel asked for on a device that cannot run it is an error.
  """
  needed = KERNEL_PLATFORMS.get(implementation)
  platform = target_platform(cfg)
  if needed and platform != needed:
    raise ValueError(f"model.attention={implementation!r} runs on {needed.upper()} only; this run compiles for "
                     f"{platform} (choose auto, einsum, chunked or xla)")
  if implementation in ("einsum", "chunked"):
    attention = einsum_attention if implementation == "einsum" else chunked_attention
    return attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, cfg)
  q, k, v = (y.astype(cfg.dtype) for y in (q, k, v))
  if implementation == "xla":
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla").astype(jnp.float32)
  window = (cfg.sliding_window - 1, 0) if cfg.sliding_window else None
  if implementation == "cudnn":
    return _cudnn(q, k, v, segment_ids, window).astype(jnp.float32)
  return _splash(q, k, v, segment_ids, cfg, window).astype(jnp.float32)


def segment_runs(segment_ids):
  """segment_ids [b, l] -> (offsets [b, MAX_SEGMENTS + 1], lengths [b, MAX_SEGMENTS]) int32: where each
  run of equal ids starts in its row and how long it is (a row's packed examples, then its padding as
  one more run), unused entries -1: the packed layout of cuDNN's attention, in which every token
  attends causally within its own run. A row holds at most packing.MAX_SEGMENTS runs (the packer's
  bound); the runs beyond it would be dropped."""
  b, length = segment_ids.shape
  starts = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  offsets = jax.vmap(lambda row: jnp.nonzero(row, size=packing.MAX_SEGMENTS, fill_value=-1)[0])(starts)
  ends = jnp.concatenate([offsets[:, 1:], jnp.full((b, 1), -1, offsets.dtype)], axis=1)
  ends = jnp.where(ends < 0, length, ends)
  lengths = jnp.where(offsets < 0, -1, ends - offsets)
  return jnp.pad(offsets, ((0, 0), (0, 1)), constant_values=-1).astype(jnp.int32), lengths.astype(jnp.int32)


def _cudnn(q, k, v, segment_ids, window):
  """cuDNN's flash attention on q [b, l, heads, d], k, v [b, l, kv_heads, d] with packed rows given as
  runs (segment_runs): no [b, l, l] mask or bias in either pass. The packed layout is not in
  jax.nn.dot_product_attention's signature; its implementation takes it (and needs Hopper)."""
  offsets, lengths = segment_runs(segment_ids)
  return cudnn_attention.dot_product_attention(
      q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
      scale=q.shape[-1] ** -0.5, mask_type=cudnn_attention.MaskType.CAUSAL,
      sliding_window_length=window[0] + 1 if window else None)


def einsum_attention(q, k, v, mask, cfg: ModelConfig):
  """The reference: q [b, l, heads, d] over k, v [b, kv_heads, s, d] (the KV cache's layout, in which
  the matmuls need no transposed copy) with `mask` [b, l, s]; scores and probabilities in f32."""
  b, length, heads, head_dim = q.shape
  q = (q * head_dim ** -0.5).transpose(0, 2, 1, 3).reshape(b, cfg.num_kv_heads, heads // cfg.num_kv_heads, length,
                                                            head_dim)
  scores = matmul("bkgld,bksd->bkgls", q, k, cfg.dtype)
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  # Heads-major out, then transposed: XLA:CPU has no bf16 kernel for this product written as "->blkgd".
  out = matmul("bkgls,bksd->bkgld", probs, v, cfg.dtype)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, length, heads, head_dim)


def chunked_attention(q, k, v, mask, cfg: ModelConfig):
  """einsum_attention over chunks of ATTENTION_CHUNK queries, each against the keys up to its own last
  slot: the later keys are masked for all of its queries (every mask here is causal in slots), so
  nearly half of the scores of a long row are never computed. Query i sits in key slot i (self-attention,
  or a prefill from cache slot 0); keys beyond the last chunk's end are never read. Each chunk's
  backward pass is written out (_chunk_attention), not derived."""
  chunk = ATTENTION_CHUNK
  q = q.astype(jnp.float32)  # as it is in training; its gradient comes back in f32
  return jnp.concatenate([_chunk_attention(q[:, start:start + chunk], k[:, :, :start + chunk], v[:, :, :start + chunk],
                                           mask[:, start:start + chunk, :start + chunk], cfg.num_kv_heads,
                                           jnp.dtype(cfg.dtype))
                          for start in range(0, q.shape[1], chunk)], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunk_attention(q, k, v, mask, num_kv_heads, dtype):
  """einsum_attention of q [b, l, heads, d] (f32) over k, v [b, kv_heads, s, d], products in `dtype`.
  The gradients come back in the inputs' dtypes (f32 in training), so that the chunks' sum is in f32."""
  return _chunk_attention_fwd(q, k, v, mask, num_kv_heads, dtype)[0]


def _chunk_attention_fwd(q, k, v, mask, num_kv_heads, dtype):
  b, length, heads, head_dim = q.shape
  q = (q * head_dim ** -0.5).transpose(0, 2, 1, 3).reshape(b, num_kv_heads, heads // num_kv_heads, length,
                                                            head_dim).astype(dtype)
  scores = jnp.einsum("bkgld,bksd->bkgls", q, k.astype(dtype), preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min), axis=-1).astype(dtype)
  out = jnp.einsum("bkgls,bksd->bkgld", probs, v.astype(dtype), preferred_element_type=jnp.float32)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, length, heads, head_dim), (q, k, v, probs, out)


def _chunk_attention_bwd(num_kv_heads, dtype, residuals, d_out):
  """Flash attention's backward: d_scores = probs * (d_probs - rowsum(d_out * out)), one pass over the
  scores where autodiff through the softmax, the mask's select and the casts makes several; of the
  forward pass only the compute-dtype probabilities are kept, not the f32 scores. Masked scores get no
  gradient because their probabilities are 0, except in a row with every key masked (padding), whose
  probabilities are uniform as in the reference: its d_out is 0 wherever padding carries no loss (no
  other row attends to it), and then so is its gradient."""
  q, k, v, probs, out = residuals  # q scaled, heads-major and in `dtype`; k and v as given
  b, length, heads, head_dim = d_out.shape
  d_out = d_out.reshape(b, length, num_kv_heads, heads // num_kv_heads, head_dim).transpose(0, 2, 3, 1, 4)
  d_out_rounded = d_out.astype(dtype)
  d_probs = jnp.einsum("bkgld,bksd->bkgls", d_out_rounded, v.astype(dtype), preferred_element_type=jnp.float32)
  rowsum = jnp.sum(d_out * out, axis=-1, keepdims=True)
  d_scores = (probs * (d_probs - rowsum)).astype(dtype)
  d_q = jnp.einsum("bkgls,bksd->bkgld", d_scores, k.astype(dtype), preferred_element_type=jnp.float32)
  d_k = jnp.einsum("bkgls,bkgld->bksd", d_scores, q, preferred_element_type=jnp.float32)
  d_v = jnp.einsum("bkgls,bkgld->bksd", probs, d_out_rounded, preferred_element_type=jnp.float32)
  d_q = (d_q * head_dim ** -0.5).transpose(0, 3, 1, 2, 4).reshape(b, length, heads, head_dim)
  return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None


_chunk_attention.defvjp(_chunk_attention_fwd, _chunk_attention_bwd)


def _write_cache(cache, update, cache_index):
  """`cache` [b, kv_heads, s, d] with `update` [b, kv_heads, l, d] written at slot cache_index, in place.
  The write is done on the bits (as unsigned integers): XLA:CPU computes a bf16 dynamic-update-slice in
  f32, which copies the whole cache at every step."""
  bits = jnp.dtype(f"uint{cache.dtype.itemsize * 8}")
  updated = jax.lax.dynamic_update_slice(jax.lax.bitcast_convert_type(cache, bits),
                                         jax.lax.bitcast_convert_type(update.astype(cache.dtype), bits),
                                         (0, 0, cache_index, 0))
  return jax.lax.bitcast_convert_type(updated, cache.dtype)


def _splash(q, k, v, segment_ids, cfg: ModelConfig, window, interpret: bool = False):
  """Splash attention, one multi-query kernel per (row, kv head): its queries are that head's group.

  A Pallas kernel cannot be partitioned by XLA: on a mesh it runs inside shard_map, each device on its
  own rows (split over the batch axes) and, where the tensor axis divides the kv heads, its own heads
  (q's heads are kv-head-major, so a block of kv heads carries the block of their query groups)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return _splash_local(q, k, v, segment_ids, cfg, window, interpret)
  batch = tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names)
  heads = "tensor" if "tensor" in mesh.axis_names and cfg.num_kv_heads % mesh.shape["tensor"] == 0 else None
  kv_heads_per_device = cfg.num_kv_heads // (mesh.shape[heads] if heads else 1)
  local = functools.partial(_splash_local, cfg=dataclasses.replace(
      cfg, num_kv_heads=kv_heads_per_device, num_heads=cfg.num_heads * kv_heads_per_device // cfg.num_kv_heads),
                            window=window, interpret=interpret)
  heads_spec = PartitionSpec(batch, None, heads, None)
  return jax.shard_map(local, in_specs=(heads_spec,) * 3 + (PartitionSpec(batch),),
                       out_specs=heads_spec, check_vma=False)(q, k, v, segment_ids)


def _splash_local(q, k, v, segment_ids, cfg: ModelConfig, window, interpret: bool = False):
  """_splash on one device's q [b, l, heads, d], k, v [b, s, kv_heads, d] and segment_ids [b, l]."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
  b, length, heads, head_dim = q.shape
  groups = heads // cfg.num_kv_heads
  shape = (length, length)
  mask = masks.LocalMask(shape, window, offset=0) if window else masks.CausalMask(shape)
  kernel = splash.make_splash_mqa_single_device(masks.MultiHeadMask([mask] * groups), interpret=interpret)
  q = (q * head_dim ** -0.5).astype(q.dtype).reshape(b, length, cfg.num_kv_heads, groups, head_dim)
  q = q.transpose(0, 2, 3, 1, 4)  # [b, kv, g, l, d]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kv, s, d]

  def one(q, k, v, ids):
    return kernel(q, k, v, segment_ids=splash.SegmentIds(q=ids, kv=ids))

  out = jax.vmap(jax.vmap(one, in_axes=(0, 0, 0, None)))(q, k, v, segment_ids)  # [b, kv, g, l, d]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, length, heads, head_dim)


# Logical axes of the weight matrices, by parameter name.
WEIGHT_AXES = {
    "wq": (EMBED, HEADS, HEAD_DIM), "wk": (EMBED, KV_HEADS, HEAD_DIM), "wv": (EMBED, KV_HEADS, HEAD_DIM),
    "wo": (HEADS, HEAD_DIM, EMBED), "w_gate": (EMBED, MLP), "w_up": (EMBED, MLP), "w_down": (MLP, EMBED),
}


def _weight_projection(module: nn.Module, name: str, spec: str, x, shape, fan_in: int):
  """x times the module's weight `name` (of `shape`, contracted over its leading dims as `spec` says),
  plus, where `name` is a LoRA target, the low-rank adapter x·A·B·alpha/rank: A is [w's input dims, rank]
  and B [rank, w's output dims], B starting at zero so that an adapted model starts equal to its base."""
  cfg = module.cfg
  axes = WEIGHT_AXES[name]
  w = _param(module, name, shape, axes, nn.initializers.normal(fan_in ** -0.5), cfg)
  out = projection(spec, x, w, cfg.dtype)
  if not cfg.lora_rank or name not in cfg.lora_targets:
    return out
  inputs, out_axes = spec.split("->")
  x_axes, w_axes = inputs.split(",")
  n_in = sum(c in x_axes for c in w_axes)  # contracted dims lead in every weight
  rows = "".join(c for c in x_axes if c not in w_axes[:n_in])
  lora_a = _param(module, f"{name}_lora_a", (*shape[:n_in], cfg.lora_rank), (*axes[:n_in], None),
                  nn.initializers.normal(fan_in ** -0.5), cfg)
  lora_b = _param(module, f"{name}_lora_b", (cfg.lora_rank, *shape[n_in:]), (None, *axes[n_in:]),
                  nn.initializers.zeros, cfg)
  if cfg.lora_dropout and module.has_rng("dropout"):
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - cfg.lora_dropout, x.shape)
    x = jnp.where(keep, x / (1.0 - cfg.lora_dropout), 0.0)
  low_rank = projection(f"{x_axes},{w_axes[:n_in]}r->{rows}r", x, lora_a, cfg.dtype)
  return out + projection(f"{rows}r,r{w_axes[n_in:]}->{out_axes}", low_rank, lora_b, cfg.dtype) * (
      cfg.lora_alpha / cfg.lora_rank)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, rope, mask, segment_ids, cache_index=None):
    """rope: rotary_tables of the tokens' positions; mask [b, l, s] (what the einsum, chunked and xla
    implementations use), segment_ids [b, l] (what the kernels use, with their own causal and
    sliding-window masks; None where the mask says more than segments can, and no kernel attends).
    With `cache_index`, keys and values of these l tokens are written into the "cache" collection at
    that offset, and the queries attend over all s cached positions (with the einsum; a prefill from
    slot 0 as self-attention would, chunked or not)."""
    cfg = self.cfg
    heads = {"wq": cfg.num_heads, "wk": cfg.num_kv_heads, "wv": cfg.num_kv_heads}
    q, k, v = (_weight_projection(self, name, "bld,dhk->blhk", x, (cfg.d_model, n, cfg.head_dim), cfg.d_model)
               for name, n in heads.items())
    if cfg.qkv_bias:
      q, k, v = (y + _param(self, f"b{name[1]}", (n, cfg.head_dim), WEIGHT_AXES[name][1:], nn.initializers.zeros,
                            cfg).astype(jnp.float32)
                 for y, (name, n) in zip((q, k, v), heads.items()))
    q, k = rotary(q, rope), rotary(k, rope)
    q = nn.with_logical_constraint(q, (BATCH, LENGTH, HEADS, HEAD_DIM))
    k, v = (nn.with_logical_constraint(y, (BATCH, LENGTH, KV_HEADS, HEAD_DIM)) for y in (k, v))
    if cache_index is None:
      implementation = attention_implementation(cfg, q.shape[1], kernels=segment_ids is not None)
      out = attend(implementation, q, k, v, mask, segment_ids, cfg)
    else:
      # [b, kv_heads, s, d], created by init with the full decode length; written at cache_index afterwards.
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
      cached_k = self.variable("cache", "k", jnp.zeros, k.shape, jnp.dtype(cfg.dtype))
      cached_v = self.variable("cache", "v", jnp.zeros, v.shape, jnp.dtype(cfg.dtype))
      cached_k.value = _write_cache(cached_k.value, k, cache_index)
      cached_v.value = _write_cache(cached_v.value, v, cache_index)
      # A prefill (cache_index a static 0) puts its queries in slots 0..l-1, as self-attention does.
      prefill = isinstance(cache_index, int) and cache_index == 0
      chunked = prefill and attention_implementation(cfg, q.shape[1], kernels=False) == "chunked"
      out = (chunked_attention if chunked else einsum_attention)(q, cached_k.value, cached_v.value, mask, cfg)
    out = nn.with_logical_constraint(out, (BATCH, LENGTH, HEADS, HEAD_DIM))
    return _weight_projection(self, "wo", "blhk,hkd->bld", out, (cfg.num_heads, cfg.head_dim, cfg.d_model),
                              cfg.num_heads * cfg.head_dim)


class FeedForward(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    gate = _weight_projection(self, "w_gate", "bld,dm->blm", x, (cfg.d_model, cfg.mlp_dim), cfg.d_model)
    up = _weight_projection(self, "w_up", "bld,dm->blm", x, (cfg.d_model, cfg.mlp_dim), cfg.d_model)
    hidden = nn.with_logical_constraint(ACTIVATIONS[cfg.activation](gate) * up, (BATCH, LENGTH, MLP))
    return _weight_projection(self, "w_down", "blm,md->bld", hidden, (cfg.mlp_dim, cfg.d_model), cfg.mlp_dim)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, rope, mask, segment_ids, cache_index=None):
    """Returns (x, None): a (carry, output) pair, so that nn.scan can stack blocks."""
    attention_input = RMSNorm(self.cfg, name="attention_norm")(x)
    x = x + Attention(self.cfg, name="attention")(attention_input, rope, mask, segment_ids, cache_index)
    x = x + FeedForward(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x))
    return nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED)), None


class Decoder(nn.Module):
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), (VOCAB, EMBED),
                            nn.initializers.normal(1.0), cfg)
    if not cfg.tie_embeddings:
      self.unembed = _param(self, "unembed", (cfg.d_model, cfg.vocab_size), (EMBED, VOCAB),
                            nn.initializers.normal(cfg.d_model ** -0.5), cfg)
    block = Block
    if cfg.remat != "none":
      # Under scan, common-subexpression elimination cannot undo the remat, so it need not be prevented.
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      # Parameters gain a leading `layers` axis: block_0 ... block_{n-1} become one stacked "blocks".
      block = nn.scan(block, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast,) * 4, length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: LAYERS})
      self.blocks = [block(cfg, name="blocks")]
    else:
      self.blocks = [block(cfg, name=f"block_{i}") for i in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg)

  def __call__(self, tokens, positions, segment_ids, cache_index=None, cache_segment_ids=None, context_ids=None):
    """[b, l] int32 each -> final hidden states [b, l, d_model] in f32. `context_ids` [b, l]: a segment
    each token sees besides its own (see attention_mask), attended through the mask (no kernel).

    Decoding (decode.py) passes `cache_index`, where these tokens go in the key/value cache,
    and `cache_segment_ids` [b, s], the segment id of every cache slot after this write.
    """
    x = jnp.take(self.embedding, tokens, axis=0).astype(jnp.float32)
    if self.cfg.embed_scale:
      x = x * jnp.sqrt(jnp.float32(self.cfg.d_model))
    x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
    if cache_index is None:
      mask = attention_mask(segment_ids, positions, self.cfg.sliding_window, context_ids)
    else:  # causal in cache order, and within the same segment
      query_slots = cache_index + jnp.arange(tokens.shape[1])
      key_slots = jnp.arange(cache_segment_ids.shape[1])
      mask = (_causal(query_slots, key_slots, self.cfg.sliding_window)[None]
              & (segment_ids[:, :, None] == cache_segment_ids[:, None, :]))
    if context_ids is not None:
      segment_ids = None  # the mask says more than segments do: every layer attends by the mask, no kernel
    rope = rotary_tables(positions, self.cfg)
    for block in self.blocks:
      x, _ = block(x, rope, mask, segment_ids, cache_index)
    return self.final_norm(x)

  def unembedding(self):
    """The [d_model, vocab] output projection. Tied: the embedding's transpose (see normalize_tied_logits)."""
    if not self.cfg.tie_embeddings:
      return self.unembed
    return self.embedding.T * self.cfg.d_model ** -0.5 if self.cfg.normalize_tied_logits else self.embedding.T


def forward(model: Decoder, params, batch, rngs=None):
  """(final hidden states [b, l, d], the [d, vocab] unembedding) of a packed batch (inputs,
  positions, segment_ids)."""
  variables = {"params": params}
  hidden = model.apply(variables, batch["inputs"], batch["positions"], batch["segment_ids"],
                       rngs=rngs or {})
  return hidden, model.apply(variables, method=Decoder.unembedding)
