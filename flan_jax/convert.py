r"""Hugging Face and GGUF checkpoints in, Hugging Face checkpoints out.

  python -m flan_jax.convert import --hf DIR --out CKPT [--scan_layers]
  python -m flan_jax.convert import --gguf FILE --out CKPT [--scan_layers]
  python -m flan_jax.convert export --checkpoint CKPT --out DIR     # an imported checkpoint
  python -m flan_jax.convert export --workdir RUN --out DIR [--step N]  # a run trained from one

`import` reads a local Hugging Face model directory: config.json and safetensors
weights (model.safetensors, or the shards model.safetensors.index.json lists;
pickled .bin files are never read). Families: llama (Llama 2/3), mistral, qwen2
(Qwen 2/2.5) and gemma (Gemma 1). `--gguf` reads a GGUF file (llama.cpp's format) of the
llama, mistral or qwen2 architecture through the `gguf` package, dequantizing each tensor when it
is read; its config and tokenizer (with the chat template) come from transformers' GGUF reader.
Either way it writes

  CKPT/0/state/     the parameters, an Orbax checkpoint (step 0) that train.init_from, evaluate,
                    generate and export read
  CKPT/model.json   {"model": config.model fields, "family": ..., "chat_format": ...}; the chat format
                    is `chat_template` (the tokenizer's own) when the model ships one
  CKPT/hf/          config.json, generation_config.json and the tokenizer files

Loading is sharded: parameters are laid out over all devices by the fsdp rules,
and each process reads from the safetensors files only the slices its devices
hold (jax.make_array_from_callback), so no host ever holds the whole model.

`export` writes the parameters back in the Hugging Face layout, names and dtype
of CKPT/hf/config.json, LoRA adapters merged into their weights, with the
tokenizer files; `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads it.
It gathers the parameters on one host.
"""

import contextlib
import json
import math
import os
import shutil

import gguf
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from jax.experimental import multihost_utils
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from flan_jax import checkpoint, commands, distributed, lora, sharding
from flan_jax.data import templates
from flan_jax.data import tokenizer as tokenizer_lib
from flan_jax.model import ModelConfig, from_config

FAMILIES = ("llama", "mistral", "qwen2", "gemma")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja")
DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16, "float16": np.float16}
SHARD_BYTES = 5 * 10**9  # safetensors files written by export, as transformers' default

# How a flan_jax parameter is laid out from its Hugging Face tensor: the HF tensor, seen with
# its dims split into `view` dims (groups: which view dims make up each HF dim), transposed by `perm`.
# (perm, groups)
VECTOR = ((0,), ((0,),))
MATRIX = ((0, 1), ((0,), (1,)))
TRANSPOSED = ((1, 0), ((0,), (1,)))
QKV = ((2, 0, 1), ((0, 1), (2,)))  # [heads * head_dim, d_model] -> [d_model, heads, head_dim]
OUT = ((1, 2, 0), ((0,), (1, 2)))  # [d_model, heads * head_dim] -> [heads, head_dim, d_model]
BIAS = ((0, 1), ((0, 1),))  # [heads * head_dim] -> [heads, head_dim]

LAYER_TENSORS = {  # (module, parameter) -> (tensor name after "model.layers.<i>.", layout)
    ("attention_norm", "scale"): ("input_layernorm.weight", VECTOR),
    ("attention", "wq"): ("self_attn.q_proj.weight", QKV),
    ("attention", "wk"): ("self_attn.k_proj.weight", QKV),
    ("attention", "wv"): ("self_attn.v_proj.weight", QKV),
    ("attention", "wo"): ("self_attn.o_proj.weight", OUT),
    ("attention", "bq"): ("self_attn.q_proj.bias", BIAS),
    ("attention", "bk"): ("self_attn.k_proj.bias", BIAS),
    ("attention", "bv"): ("self_attn.v_proj.bias", BIAS),
    ("mlp_norm", "scale"): ("post_attention_layernorm.weight", VECTOR),
    ("mlp", "w_gate"): ("mlp.gate_proj.weight", TRANSPOSED),
    ("mlp", "w_up"): ("mlp.up_proj.weight", TRANSPOSED),
    ("mlp", "w_down"): ("mlp.down_proj.weight", TRANSPOSED),
}
TOP_TENSORS = {
    ("embedding",): ("model.embed_tokens.weight", MATRIX),
    ("unembed",): ("lm_head.weight", TRANSPOSED),
    ("final_norm", "scale"): ("model.norm.weight", VECTOR),
}


def model_config(hf: dict, where: str) -> dict:
  """config.model fields for a Hugging Face config.json; unsupported features are errors naming the key."""
  family = hf.get("model_type")
  if family not in FAMILIES:
    raise ValueError(f"{where}: model_type {family!r} is not supported; flan_jax imports {', '.join(FAMILIES)}")
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})  # transformers 5 / 4 spelling
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  activation = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  unsupported = {
      "rope_type": (rope_type, rope_type not in ("default", "llama3"), "default or llama3"),
      "hidden_act": (activation, activation not in ACTIVATIONS, " or ".join(ACTIVATIONS)),
      "attention_bias": (hf.get("attention_bias"), bool(hf.get("attention_bias")), "false (o_proj has no bias here)"),
      "mlp_bias": (hf.get("mlp_bias"), bool(hf.get("mlp_bias")), "false"),
      "use_sliding_window": (hf.get("use_sliding_window"), bool(hf.get("use_sliding_window")) and family == "qwen2",
                             "false (Qwen 2's per-layer windows)"),
  }
  for key, (value, bad, supported) in unsupported.items():
    if bad:
      raise ValueError(f"{where}: {key}={value!r} is not supported; flan_jax supports {supported}")
  heads = hf["num_attention_heads"]
  fields = dict(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), activation=ACTIVATIONS[activation],
      qkv_bias=family == "qwen2", sliding_window=(hf.get("sliding_window") or 0) if family == "mistral" else 0,
      tie_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma")), embed_scale=family == "gemma",
      # Compute in the checkpoint's precision: f32 checkpoints in f32, bf16 and f16 ones in bf16.
      dtype="float32" if (hf.get("dtype") or hf.get("torch_dtype")) == "float32" else "bfloat16")
  if rope_type == "llama3":
    fields.update(rope_scaling_factor=float(rope["factor"]), rope_low_freq_factor=float(rope["low_freq_factor"]),
                  rope_high_freq_factor=float(rope["high_freq_factor"]),
                  rope_original_max_len=int(rope["original_max_position_embeddings"]))
  return fields


def chat_format(family: str, hf_dir: str) -> str:
  """The output format: the tokenizer's own chat template if it ships one, else the family's
  (templates.FORMATS)."""
  has_tokenizer = any(os.path.isfile(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer.model"))
  if has_tokenizer and tokenizer_lib.load(hf_dir).chat_template is not None:
    return templates.CHAT_TEMPLATE
  if family == "llama":
    tokenizer_json = os.path.join(hf_dir, "tokenizer.json")
    is_llama3 = os.path.isfile(tokenizer_json) and "<|start_header_id|>" in open(tokenizer_json).read()
    return "llama3" if is_llama3 else "mistral"  # Llama 2 chat's [INST] turns
  return {"mistral": "mistral", "qwen2": "chatml", "gemma": "gemma"}[family]


def tensor_map(flat_params: dict, family: str) -> dict:
  """{flan_jax parameter path: (HF tensor names, stacked, layout, offset)} for flattened parameters (arrays
  or shapes, by path tuple). Stacked: scanned layers, one name per layer along the leading axis. Gemma
  stores RMSNorm scales as offsets from 1."""
  out = {}
  for path, value in flat_params.items():
    offset = 1.0 if family == "gemma" and path[-1] == "scale" else 0.0
    if path[0] == "blocks":
      name, layout = LAYER_TENSORS[path[1:]]
      names = [f"model.layers.{i}.{name}" for i in range(value.shape[0])]
    elif path[0].startswith("block_"):
      name, layout = LAYER_TENSORS[path[1:]]
      names = [f"model.layers.{path[0].removeprefix('block_')}.{name}"]
    else:
      (name, layout), names = TOP_TENSORS[path], [TOP_TENSORS[path][0]]
    out[path] = (names, path[0] == "blocks", layout, offset)
  return out


def _view_shape(our_shape, layout):
  perm, _ = layout
  view = [0] * len(perm)
  for i, p in enumerate(perm):
    view[p] = our_shape[i]
  return view


def hf_shape(our_shape, layout) -> tuple[int, ...]:
  view = _view_shape(our_shape, layout)
  return tuple(math.prod(view[d] for d in group) for group in layout[1])


def read_slice(tensor, our_shape, layout, index) -> np.ndarray:
  """The `index` (slices) of a flan_jax parameter from its HF tensor (a safetensors slice), reading only
  the rows/columns needed: per HF dim, the span of its first view dim (the rest are read whole)."""
  perm, groups = layout
  view = _view_shape(our_shape, layout)
  view_index = [None] * len(perm)
  for i, p in enumerate(perm):
    view_index[p] = slice(*index[i].indices(our_shape[i]))
  hf_index, block_shape, inner_index = [], [], []
  for group in groups:
    first = view_index[group[0]]
    rest = math.prod(view[d] for d in group[1:])
    hf_index.append(slice(first.start * rest, first.stop * rest))
    block_shape += [first.stop - first.start] + [view[d] for d in group[1:]]
    inner_index += [slice(None)] + [view_index[d] for d in group[1:]]
  block = np.asarray(tensor[tuple(hf_index)]).reshape(block_shape)[tuple(inner_index)]
  return block.transpose(perm)


class SafetensorsReader(contextlib.ExitStack):
  """Tensors of a Hugging Face directory by name, opened lazily (safetensors memory-maps its files)."""

  def __init__(self, hf_dir: str):
    super().__init__()
    self.hf_dir = hf_dir
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.isfile(index):
      with open(index) as f:
        self.files = {name: os.path.join(hf_dir, file) for name, file in json.load(f)["weight_map"].items()}
    elif os.path.isfile(single):
      with safe_open(single, "numpy") as f:
        self.files = {name: single for name in f.keys()}
    else:
      pickled = [f for f in os.listdir(hf_dir) if f.endswith((".bin", ".pt", ".pth"))]
      raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json"
                              + (f" (found {pickled}: pickle files are never loaded; convert them to safetensors)"
                                 if pickled else ""))
    self._open = {}
    self.used = set()

  def slice(self, name: str):
    """A safetensors slice: `get_shape()`, and indexing reads only the indexed part."""
    if name not in self.files:
      raise KeyError(f"{self.hf_dir}: tensor {name!r} is missing from the checkpoint")
    path = self.files[name]
    if path not in self._open:
      self._open[path] = self.enter_context(safe_open(path, "numpy"))
    self.used.add(name)
    return self._open[path].get_slice(name)

  def unused(self) -> list[str]:
    return sorted(set(self.files) - self.used)


class _Dequantized:
  """One GGUF tensor in the safetensors slice interface, dequantized to f32 when first indexed."""

  def __init__(self, reader: "GGUFReader", name: str):
    self.reader, self.name = reader, name

  def get_shape(self):
    return tuple(int(d) for d in reversed(self.reader.tensors[self.name].shape))  # GGUF lists dims innermost first

  def __getitem__(self, index):
    return self.reader.dequantized(self.name)[index]


class GGUFReader(contextlib.ExitStack):
  """Tensors of a GGUF file by their Hugging Face names (gguf's own name map), dequantized one at a
  time. llama.cpp stores a llama model's query and key rows interleaved for its rotary kernel; they
  are put back in Hugging Face's order."""

  def __init__(self, path: str, file: gguf.GGUFReader, hf_config: dict):
    super().__init__()
    self.path, self.hf_dir = path, path
    self.gguf = file
    self.arch = str(self.gguf.fields["general.architecture"].contents())
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[self.arch]
    self.name_map = gguf.get_tensor_name_map(arch, hf_config["num_hidden_layers"])
    self.tensors = {t.name: t for t in self.gguf.tensors}
    self.heads = (hf_config["num_attention_heads"], hf_config.get("num_key_value_heads") or
                  hf_config["num_attention_heads"])
    self.files, self.used = {}, set()
    self._last = (None, None)  # (name, array): the tensor every shard of one parameter reads from

  def gguf_name(self, name: str) -> str | None:
    found = self.name_map.get_name(name, try_suffixes=(".weight", ".bias"))
    return found if found in self.tensors else None

  def slice(self, name: str):
    found = self.gguf_name(name)
    if found is None:
      raise KeyError(f"{self.path}: tensor {name!r} is missing from the GGUF file")
    self.files[name] = self.path
    self.used.add(found)
    return _Dequantized(self, found)

  def dequantized(self, gguf_name: str) -> np.ndarray:
    if self._last[0] == gguf_name:
      return self._last[1]
    tensor = self.tensors[gguf_name]
    try:
      array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
      raise ValueError(f"{self.path}: tensor {gguf_name!r} has type {tensor.tensor_type.name}, which the gguf "
                       "package cannot dequantize") from None
    array = np.asarray(array, np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))
    if self.arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
      heads = self.heads[0] if ".attn_q." in gguf_name else self.heads[1]
      array = array.reshape(heads, -1, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
    self._last = (gguf_name, array)
    return array

  def unused(self) -> list[str]:
    return sorted(set(self.tensors) - self.used)


GGUF_ARCHITECTURES = ("llama", "qwen2")  # mistral's GGUF files use the llama architecture
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's Llama 3 rope scaling: a divisor per rotary frequency


def import_gguf(path: str, out: str, *, scan_layers: bool = False, devices=None) -> dict:
  """Reads a GGUF file into a flan_jax checkpoint at `out`: the config and tokenizer through
  transformers' GGUF support (into `out/hf`), the tensors through the gguf package."""
  import transformers  # noqa: PLC0415 -- heavy, and needed only here
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: --gguf must be a GGUF file")
  try:
    file = gguf.GGUFReader(path)
    arch = str(file.fields["general.architecture"].contents())
  except (ValueError, KeyError, OSError) as e:
    raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
  if arch not in GGUF_ARCHITECTURES:
    raise ValueError(f"{path}: general.architecture {arch!r} is not supported; flan_jax imports GGUF files of "
                     f"{', '.join(GGUF_ARCHITECTURES)}")
  directory, name = os.path.split(os.path.abspath(path))
  hf_out = os.path.join(out, "hf")
  if jax.process_index() == 0:
    hf_config = transformers.AutoConfig.from_pretrained(directory, gguf_file=name).to_dict()
    hf_config.pop("quantization_config", None)
    hf_config["dtype"] = "float32"  # the weights are dequantized to f32; compute as transformers does
    if ROPE_FREQS in {t.name for t in file.tensors}:  # transformers' GGUF reader ignores it
      hf_config["rope_parameters"] = {**(hf_config.get("rope_parameters") or {}),
                                      **llama3_rope_scaling(path, file, hf_config)}
    os.makedirs(hf_out, exist_ok=True)
    with open(os.path.join(hf_out, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name).save_pretrained(hf_out)
    _keep_gguf_special_token_flags(file.fields, os.path.join(hf_out, "tokenizer_config.json"))
  multihost_utils.sync_global_devices("gguf config and tokenizer written")
  with open(os.path.join(hf_out, "config.json")) as f:
    hf_config = json.load(f)
  with GGUFReader(path, file, hf_config) as reader:
    reader.used.add(ROPE_FREQS)  # read into the config above
    return _import(hf_config, f"{path} (as {os.path.join(hf_out, 'config.json')})", reader, out, scan_layers,
                   devices, hf_files=hf_out)


def llama3_rope_factors(head_dim: int, theta: float, rope: dict) -> np.ndarray:
  """The per-frequency divisors of Llama 3's rope scaling ("llama3" in Hugging Face configs), as
  llama.cpp stores them in a GGUF file's rope_freqs.weight."""
  wavelength = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  original, low, high = (rope["original_max_position_embeddings"], rope["low_freq_factor"],
                         rope["high_freq_factor"])
  smooth = (original / wavelength - low) / (high - low)
  interpolated = 1 / ((1 - smooth) / rope["factor"] + smooth)
  return np.where(wavelength < original / high, 1.0,
                  np.where(wavelength > original / low, rope["factor"], interpolated))


def llama3_rope_scaling(path: str, file: gguf.GGUFReader, hf_config: dict) -> dict:
  """The "llama3" rope parameters whose divisors are the file's rope_freqs.weight (Llama 3.1-3.3),
  or an error naming the tensor. Only the ratios of original_max_position_embeddings to the low and
  high frequency factors act, so the low one is taken as 1: the factor is the largest divisor, and
  the rest is solved from the divisors between 1 and the factor (Llama 3's published 4 and 8192
  where fewer than two are)."""
  tensor = next(t for t in file.tensors if t.name == ROPE_FREQS)
  divisors = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float64).reshape(-1)
  theta = float((hf_config.get("rope_parameters") or {}).get("rope_theta", hf_config.get("rope_theta", 1e4)))
  head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // hf_config["num_attention_heads"]
  wavelength = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  factor = float(divisors.max())
  rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
  middle = (divisors > 1 + 1e-6) & (divisors < factor - 1e-6)
  if middle.sum() >= 2 and factor > 1:
    # smooth = (1 / divisor - 1 / factor) / (1 - 1 / factor) = (original / wavelength - 1) / (high - 1)
    smooth = (1 / divisors[middle] - 1 / factor) / (1 - 1 / factor)
    (original, high), *_ = np.linalg.lstsq(
        np.stack([1 / wavelength[middle], -smooth], axis=1), 1 - smooth, rcond=None)
    rope.update(high_freq_factor=float(high), original_max_position_embeddings=int(round(original)))
  if divisors.shape != wavelength.shape or not np.allclose(
      llama3_rope_factors(head_dim, theta, rope), divisors, rtol=1e-4):
    raise ValueError(f"{path}: tensor {ROPE_FREQS!r} ({len(divisors)} divisors from 1 to {factor:g}) is not "
                     "Llama 3's rope scaling for any parameters flan_jax can find; importing without it would "
                     "compute with the wrong rotary frequencies")
  return rope


def _keep_gguf_special_token_flags(fields, tokenizer_config: str):
  """The GGUF file's add_bos_token/add_eos_token flags into tokenizer_config.json, where our tokenizer
  reads them: llama.cpp applies them, transformers' GGUF tokenizer drops them."""
  with open(tokenizer_config) as f:
    config = json.load(f)
  for key in ("add_bos_token", "add_eos_token"):
    if f"tokenizer.ggml.{key}" in fields:
      config[key] = bool(fields[f"tokenizer.ggml.{key}"].contents())
  with open(tokenizer_config, "w") as f:
    json.dump(config, f, indent=2)


def import_checkpoint(hf_dir: str, out: str, *, scan_layers: bool = False, devices=None) -> dict:
  """Reads a Hugging Face directory into a flan_jax checkpoint at `out` (see the module docstring)."""
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: --hf must be a Hugging Face model directory")
  with open(config_path) as f:
    hf = json.load(f)
  with SafetensorsReader(hf_dir) as reader:
    return _import(hf, config_path, reader, out, scan_layers, devices, hf_files=hf_dir)


def _import(hf: dict, config_path: str, reader, out: str, scan_layers: bool, devices, hf_files: str) -> dict:
  """Parameters from `reader` (tensors by Hugging Face name) into `out`, with model.json and `out/hf`
  (copied from `hf_files` unless it is that directory)."""
  family = hf.get("model_type")
  fields = {**model_config(hf, config_path), "scan_layers": scan_layers}
  model = from_config(fields)
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1), devices)
  rules = sharding.rules("fsdp")
  with sharding.context(mesh, rules):
    shapes = sharding.param_shapes(model, mesh, rules)
  flat_shapes, params = traverse_util.flatten_dict(shapes), {}
  for path, (names, stacked, layout, offset) in tensor_map(flat_shapes, family).items():
    target = flat_shapes[path]
    layer_shape = target.shape[1:] if stacked else target.shape
    for name in names:
      found = tuple(reader.slice(name).get_shape())
      if found != hf_shape(layer_shape, layout):
        raise ValueError(f"{reader.files[name]}: tensor {name!r} has shape {found}; {config_path} implies "
                         f"{hf_shape(layer_shape, layout)}")

    def read(index, names=names, stacked=stacked, layout=layout, offset=offset, target=target):
      if stacked:
        block = np.stack([read_slice(reader.slice(names[i]), target.shape[1:], layout, index[1:])
                          for i in range(*index[0].indices(target.shape[0]))])
      else:
        block = read_slice(reader.slice(names[0]), target.shape, layout, index)
      return (block.astype(np.float32) + offset).astype(target.dtype)

    params[path] = jax.make_array_from_callback(target.shape, target.sharding, read)
  if reader.unused():
    logging.warning("%s: tensors not imported (not part of the model): %s", reader.hf_dir, ", ".join(reader.unused()))
  ocp.PyTreeCheckpointer().save(os.path.join(os.path.abspath(out), "0", "state"),
                                {"params": traverse_util.unflatten_dict(params)})
  if jax.process_index() == 0:
    os.makedirs(os.path.join(out, "hf"), exist_ok=True)
    if os.path.abspath(hf_files) != os.path.abspath(os.path.join(out, "hf")):
      for name in HF_FILES:
        if os.path.isfile(os.path.join(hf_files, name)):
          shutil.copy(os.path.join(hf_files, name), os.path.join(out, "hf", name))
    info = {"model": fields, "family": family, "chat_format": chat_format(family, os.path.join(out, "hf"))}
    with open(os.path.join(out, "model.json"), "w") as f:
      json.dump(info, f, indent=2, sort_keys=True)
  return fields


def to_hf_tensors(params, cfg: ModelConfig, family: str, dtype) -> dict[str, np.ndarray]:
  """Host parameters (without adapters) -> {Hugging Face name: array in `dtype`}."""
  tensors, flat = {}, traverse_util.flatten_dict(params)
  for path, (names, stacked, layout, offset) in tensor_map(flat, family).items():
    value = np.asarray(flat[path], np.float32) - offset
    inverse = np.argsort(layout[0])
    for name, layer in zip(names, value if stacked else [value]):
      tensors[name] = np.ascontiguousarray(layer.transpose(inverse).reshape(hf_shape(layer.shape, layout)),
                                           dtype=dtype)
  return tensors


def export_checkpoint(params, cfg: ModelConfig, source_dir: str, out: str):
  """Writes parameters (adapters merged) as a Hugging Face directory, using the imported checkpoint
  `source_dir`'s hf/ files."""
  info = checkpoint.read_info(source_dir)
  hf_files = os.path.join(source_dir, "hf")
  with open(os.path.join(hf_files, "config.json")) as f:
    hf = json.load(f)
  dtype = DTYPES[hf.get("dtype") or hf.get("torch_dtype") or "float32"]
  host = jax.device_get(params)
  tensors = to_hf_tensors(lora.merge(host, cfg), cfg, info["family"], dtype)
  os.makedirs(out, exist_ok=True)
  shards, current, size = [], {}, 0
  for name, array in tensors.items():
    if current and size + array.nbytes > SHARD_BYTES:
      shards.append(current)
      current, size = {}, 0
    current[name] = array
    size += array.nbytes
  shards.append(current)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(out, file), metadata={"format": "pt"})
      weight_map.update({name: file for name in shard})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map}, f,
                indent=2)
  for name in os.listdir(hf_files):
    shutil.copy(os.path.join(hf_files, name), os.path.join(out, name))


def main(argv):
  if len(argv) != 2 or argv[1] not in ("import", "export"):
    raise app.UsageError("usage: python -m flan_jax.convert import|export [flags]")
  commands.quiet_absl_logging()
  flag = flags.FLAGS
  if not flag.out:
    raise app.UsageError("--out is required")
  if argv[1] == "import":
    if bool(flag.hf) == bool(flag.gguf):
      raise app.UsageError("import needs one of --hf DIR or --gguf FILE")
    load = import_checkpoint if flag.hf else import_gguf
    fields = load(flag.hf or flag.gguf, flag.out, scan_layers=flag.scan_layers)
    print(f"imported {flag.hf or flag.gguf} ({fields['num_layers']} layers, d_model {fields['d_model']}) "
          f"into {flag.out}")
    return
  if bool(flag.checkpoint) == bool(flag.workdir):
    raise app.UsageError("export needs one of --checkpoint CKPT (imported) or --workdir RUN (trained)")
  distributed.initialize()  # a model split over every process's devices; process 0 writes
  if flag.checkpoint:
    fields, source = checkpoint.read_info(flag.checkpoint)["model"], flag.checkpoint
    step, params, _ = checkpoint.load_for_inference(fields, checkpoint_dir=flag.checkpoint, step=flag.step)
  else:
    with open(os.path.join(flag.workdir, "config.json")) as f:
      config = ml_collections.ConfigDict(json.load(f))
    fields, source = config.model.to_dict(), config.train.init_from
    if not source:
      raise ValueError(f"{flag.workdir}: export needs a run started from an imported checkpoint (train.init_from)")
    step, params, _ = checkpoint.load_for_inference(fields, workdir=flag.workdir, init_from=source, step=flag.step)
  export_checkpoint(params, ModelConfig(**fields), source, flag.out)
  if not jax.process_index():
    print(f"exported step {step} to {flag.out}")


if __name__ == "__main__":
  flags.DEFINE_string("hf", None, "import: a Hugging Face model directory.")
  flags.DEFINE_string("gguf", None, "import: a GGUF file (llama, mistral or qwen2 architecture).")
  flags.DEFINE_string("out", None, "Where to write: a checkpoint directory (import) or a Hugging Face one (export).")
  flags.DEFINE_bool("scan_layers", False, "import: lay the layers out stacked, for model.scan_layers=True.")
  flags.DEFINE_string("checkpoint", None, "export: a checkpoint written by import.")
  flags.DEFINE_string("workdir", None, "export: a training run's workdir (started with train.init_from).")
  flags.DEFINE_integer("step", None, "export: the checkpoint step (default: the newest).")
  app.run(main)
