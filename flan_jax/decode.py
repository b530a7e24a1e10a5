"""Batched autoregressive generation with a key/value cache.

Prompts are left-padded to a common length P, so every row writes its next token
into the same cache slot. Padding has segment id 0 and prompts and answers 1,
so no real token attends to padding; positions count from each prompt's first
token. One jitted call runs the prefill over [b, P] and then `max_new_tokens`
single-token steps, each attending over the cache.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from flan_jax.model import Decoder, matmul


def sample(logits, rng, *, temperature: float, top_k: int, top_p: float):
  """Next tokens [b] from f32 logits [b, vocab]: greedy at temperature 0, else top-k / nucleus sampling."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest set of tokens whose probability reaches top_p (always at least the first).
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def left_pad(prompts, pad_id: int, bucket: int = 1):
  """Token lists -> (tokens, positions, segment_ids), each [b, P] int32, prompts flush right;
  P is the longest prompt's length rounded up to a multiple of `bucket`."""
  length = -(-max(len(p) for p in prompts) // bucket) * bucket
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  positions = np.zeros((len(prompts), length), np.int32)
  segment_ids = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    start = length - len(prompt)
    tokens[row, start:] = prompt
    positions[row, start:] = np.arange(len(prompt))
    segment_ids[row, start:] = 1
  return tokens, positions, segment_ids


def cache_shapes(model: Decoder, rows: int, length: int):
  """The key/value cache of `rows` rows of `length` slots, as ShapeDtypeStructs ([b, kv_heads, s, d] per layer)."""
  def init():  # traced, never run: no array is made on the devices (which may be compile-only)
    full = jnp.zeros((rows, length), jnp.int32)
    return model.init(jax.random.key(0), full, full, full, cache_index=0, cache_segment_ids=full)["cache"]
  return jax.eval_shape(init)


def forward(params, cache, tokens, positions, segment_ids, cache_index, cache_segment_ids, *, model: Decoder):
  """(f32 logits [b, vocab] after the last of `tokens` [b, l], the cache with their keys and values written at
  `cache_index`): one decoding step (l = 1), or the prefill (cache_index 0)."""
  hidden, variables = model.apply({"params": params, "cache": cache}, tokens, positions, segment_ids,
                                  cache_index=cache_index, cache_segment_ids=cache_segment_ids, mutable=["cache"])
  unembedding = model.apply({"params": params}, method=Decoder.unembedding)
  return matmul("bd,dv->bv", hidden[:, -1], unembedding, model.cfg.dtype), variables["cache"]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "stop_ids", "temperature", "top_k", "top_p"))
def _generate(params, tokens, positions, segment_ids, rng, *, model: Decoder, max_new_tokens: int, stop_ids: tuple,
              temperature: float, top_k: int, top_p: float):
  b, prompt_len = tokens.shape
  # Slots after the prompt hold generated tokens (segment 1); until written, the causal mask hides them.
  cache_segment_ids = jnp.concatenate([segment_ids, jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes(model, b, prompt_len + max_new_tokens))
  pick = functools.partial(sample, temperature=temperature, top_k=top_k, top_p=top_p)
  stop = jnp.asarray(stop_ids, jnp.int32).reshape(-1)

  def forward_step(cache, tokens, positions, segments, index):
    return forward(params, cache, tokens, positions, segments, index, cache_segment_ids, model=model)

  logits, cache = forward_step(cache, tokens, positions, segment_ids, 0)
  rng, step_rng = jax.random.split(rng)
  first = pick(logits, step_rng)

  # Token i is written out, then fed through the model for token i + 1; the loop ends at
  # max_new_tokens or once every row has written a stop id (what follows one is never read).
  def unfinished(carry):
    index, _, _, _, _, ended, _ = carry
    return (index < max_new_tokens) & ~jnp.all(ended)

  def step(carry):
    index, cache, token, position, rng, ended, generated = carry
    generated = jax.lax.dynamic_update_slice(generated, token[:, None], (0, index))
    ended = ended | jnp.any(token[:, None] == stop[None, :], axis=1)
    logits, cache = forward_step(cache, token[:, None], position[:, None], jnp.ones((b, 1), jnp.int32),
                                 prompt_len + index)
    rng, step_rng = jax.random.split(rng)
    return index + 1, cache, pick(logits, step_rng), position + 1, rng, ended, generated

  carry = (0, cache, first, positions[:, -1] + 1, rng, jnp.zeros((b,), bool),
           jnp.zeros((b, max_new_tokens), jnp.int32))
  return jax.lax.while_loop(unfinished, step, carry)[-1]  # [b, max_new_tokens]


def generate(params, model: Decoder, prompts, *, max_new_tokens: int, stop_ids, pad_id: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None, bucket: int = 1,
             batch_size: int = 0):
  """Token lists -> generated token lists, each cut before its first stop id (EOS, end of turn) or at
  max_new_tokens (so an answer of exactly max_new_tokens tokens was cut short).

  Prompts are padded to a multiple of `bucket` tokens, so that few prompt lengths compile. With
  `batch_size`, they go through in batches of exactly that many rows (the last one padded with
  copies of its first prompt), so one batch shape compiles; batch i samples with fold_in(rng, i)."""
  rng = jax.random.key(0) if rng is None else rng
  if batch_size:
    batches = [list(prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]
    batches = [(b + [b[0]] * (batch_size - len(b)), jax.random.fold_in(rng, i)) for i, b in enumerate(batches)]
  else:
    batches = [(list(prompts), rng)]
  # Every batch is dispatched before any is read back: on an accelerator the host pads the next batch (and
  # compiles a new prompt length) while the device still decodes the previous ones. (The commands run
  # CPU programs inline, as commands.keep_freed_host_memory says, where this order costs nothing.)
  pending = []
  for batch, batch_rng in batches:
    tokens, positions, segment_ids = left_pad(batch, pad_id, bucket)
    pending.append(_generate(params, tokens, positions, segment_ids, batch_rng, model=model,
                             max_new_tokens=max_new_tokens, stop_ids=tuple(int(i) for i in stop_ids),
                             temperature=temperature, top_k=top_k, top_p=top_p))
  out = []
  for generated in pending:
    # All of the output on every process, however it is sharded (the parameters may span processes).
    for row in multihost_utils.process_allgather(generated, tiled=True)[:len(prompts) - len(out)]:
      stop = np.flatnonzero(np.isin(row, stop_ids))
      out.append(row[:stop[0]] if len(stop) else row)
  return out
