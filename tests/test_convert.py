"""Import/export against `transformers` (PyTorch, CPU) on tiny random models of each family, made here."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers

from flan_jax import checkpoint, convert, lora
from flan_jax.model import Decoder, ModelConfig
from tests.helpers import HF_FAMILIES, LLAMA3_CHAT_TEMPLATE, ROOT, SHAPE, hf_config, make_hf_chat_model, make_hf_tokenizer

TOKENS = np.random.default_rng(0).integers(0, 96, (2, 24))


def make_hf_model(family, directory, max_shard_size="5GB"):
  """A random f32 model, weights drawn wide enough (norm scales too) that any layout slip shows in the logits."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(hf_config(family), dtype=torch.float32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_((0.0 if family == "gemma" else 1.0) + 0.3 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.15)
  model.save_pretrained(directory, max_shard_size=max_shard_size)
  return model


def hf_logits(model):
  with torch.no_grad():
    return model(torch.tensor(TOKENS)).logits.numpy()


def our_logits(params, fields):
  cfg = ModelConfig(**{**fields, "dtype": "float32"})
  model = Decoder(cfg)
  positions = jnp.broadcast_to(jnp.arange(TOKENS.shape[1]), TOKENS.shape)
  hidden = jax.jit(model.apply)({"params": params}, jnp.asarray(TOKENS), positions, jnp.ones_like(positions))
  unembedding = model.apply({"params": params}, method=Decoder.unembedding)
  return np.asarray(jnp.einsum("bld,dv->blv", hidden, unembedding, precision="highest"))


@pytest.fixture(scope="module", params=HF_FAMILIES)
def imported(request, tmp_path_factory):
  family = request.param
  root = tmp_path_factory.mktemp(family)
  # Sharded safetensors for one family, stacked (scanned) layers for another.
  model = make_hf_model(family, root / "hf", max_shard_size="40KB" if family == "qwen2" else "5GB")
  fields = convert.import_checkpoint(str(root / "hf"), str(root / "ckpt"), scan_layers=family == "mistral")
  _, params, _ = checkpoint.load_for_inference(fields, checkpoint_dir=str(root / "ckpt"))
  return family, root, model, fields, params


def test_import_gives_transformers_logits(imported):
  family, root, model, fields, params = imported
  if family == "qwen2":
    assert os.path.exists(root / "hf" / "model.safetensors.index.json")
    assert "bq" in params["block_0"]["attention"]
  expected = hf_logits(model)
  np.testing.assert_allclose(our_logits(params, fields), expected, atol=1e-4, rtol=1e-5)
  assert np.abs(expected).max() > 1.0  # logits large enough that the tolerance means something


def test_export_round_trip_loads_in_transformers(imported, tmp_path):
  family, root, model, fields, params = imported
  convert.export_checkpoint(params, ModelConfig(**fields), str(root / "ckpt"), str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
  np.testing.assert_allclose(hf_logits(reloaded), hf_logits(model), atol=1e-4, rtol=1e-5)


def test_export_merges_lora_adapters(tmp_path):
  root = tmp_path
  model = make_hf_model("llama", root / "hf")
  fields = convert.import_checkpoint(str(root / "hf"), str(root / "ckpt"))
  adapted = {**fields, "lora_rank": 4, "lora_targets": ("wq", "wo", "w_up")}
  cfg = ModelConfig(**adapted)
  shapes = jax.eval_shape(Decoder(cfg).init, jax.random.key(0), *[jnp.zeros((1, 4), jnp.int32)] * 3)["params"]
  adapter_shapes, _ = lora.split(nn.unbox(shapes))
  rng = np.random.default_rng(1)
  adapters = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), adapter_shapes)
  _, base, _ = checkpoint.load_for_inference(fields, checkpoint_dir=str(root / "ckpt"))
  params = lora.combine(adapters, jax.device_get(base))
  convert.export_checkpoint(params, cfg, str(root / "ckpt"), str(tmp_path / "merged"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
  merged_logits = hf_logits(reloaded)
  np.testing.assert_allclose(merged_logits, our_logits(params, adapted), atol=1e-4, rtol=1e-5)
  assert not np.allclose(merged_logits, hf_logits(model), atol=1e-2)  # the adapters did change the model


def test_model_json_and_hf_files(imported):
  family, root, _, fields, _ = imported
  info = checkpoint.read_info(str(root / "ckpt"))
  assert info["model"] == fields and info["family"] == family
  assert info["chat_format"] == {"llama": "mistral", "mistral": "mistral", "qwen2": "chatml", "gemma": "gemma"}[family]
  assert (root / "ckpt" / "hf" / "config.json").exists()


@pytest.mark.parametrize("change, message", [
    (dict(model_type="gemma2"), "model_type 'gemma2' is not supported"),
    (dict(rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=1e4)), "rope_type='yarn' is not supported"),
    (dict(hidden_act="relu"), "hidden_act='relu' is not supported"),
    (dict(attention_bias=True), "attention_bias=True is not supported"),
])
def test_unsupported_configs_are_errors_naming_the_key(change, message):
  hf = {**hf_config("llama").to_dict(), **change}
  with pytest.raises(ValueError, match=message):
    convert.model_config(hf, "x/config.json")


def test_bad_checkpoint_directories(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(hf_config("llama").to_dict()))
  (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
  with pytest.raises(FileNotFoundError, match="pickle files are never loaded"):
    convert.import_checkpoint(str(tmp_path), str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match="config.json does not exist"):
    convert.import_checkpoint(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_wrong_tensor_shape_is_an_error_naming_the_tensor(tmp_path):
  make_hf_model("llama", tmp_path / "hf")
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  config["intermediate_size"] = 96
  (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"hf/model.safetensors: tensor 'model.layers.0.mlp.\w+_proj.weight' has shape"):
    convert.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "out"))


def test_read_slice_reads_the_right_block():
  """A [d_model, heads, head_dim] slice of a q_proj stored as [heads * head_dim, d_model]."""
  heads, head_dim, d_model = 4, 3, 8
  hf = np.arange(heads * head_dim * d_model).reshape(heads * head_dim, d_model)
  ours = hf.reshape(heads, head_dim, d_model).transpose(2, 0, 1)
  index = (slice(2, 6), slice(1, 3), slice(None))
  np.testing.assert_array_equal(convert.read_slice(hf, ours.shape, convert.QKV, index), ours[index])
  out = hf.T  # o_proj: [d_model, heads * head_dim] -> [heads, head_dim, d_model]
  ours_o = out.reshape(d_model, heads, head_dim).transpose(1, 2, 0)
  index = (slice(0, 2), slice(None), slice(4, 8))
  np.testing.assert_array_equal(convert.read_slice(out, ours_o.shape, convert.OUT, index), ours_o[index])


def _cli(*args, timeout=600):
  result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  if result.returncode:
    raise AssertionError(f"{args[:2]} failed ({result.returncode}):\n{result.stderr[-4000:]}")
  return result.stdout


@pytest.mark.slow
def test_import_finetune_with_lora_generate_and_export(tmp_path):
  """The user's path: a Hugging Face model with its tokenizer -> import -> LoRA fine-tuning on flan_mini
  in its chat format -> raw completion by eye -> export of the merged model for transformers."""
  from flan_jax.data import vocab
  from tests.helpers import load_config
  data = load_config("tiny").data
  vocab = make_hf_tokenizer(str(tmp_path / "hf"), vocab.tokenizer_texts(data, vocab.tokenizer_tasks(data), 2000))
  torch.manual_seed(0)
  config = transformers.LlamaConfig(**{**SHAPE, "vocab_size": vocab}, tie_word_embeddings=True)
  base = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():
    for p in base.parameters():
      p.normal_(0.0, 0.15) if p.ndim > 1 else None
  base.save_pretrained(tmp_path / "hf")
  _cli("flan_jax.convert", "import", f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
  assert checkpoint.read_info(str(tmp_path / "ckpt"))["chat_format"] == "llama3"

  # Greedy raw completion equals transformers' own.
  prompt = "Premise: the cat sat"
  stdout = _cli("flan_jax.generate", f"--checkpoint={tmp_path / 'ckpt'}", "--raw", f"--prompt={prompt}",
                "--max_new_tokens=6")
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  ids = torch.tensor([reference(prompt).input_ids])
  assert ids[0, 0] == reference.bos_token_id  # Llama 3's post-processor puts BOS first
  with torch.no_grad():
    expected = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
  assert stdout.strip() == f"[step 0] {reference.decode(expected.tolist()).strip()}"

  workdir = tmp_path / "run"
  _cli("flan_jax.train", f"--config=configs/finetune.py:checkpoint={tmp_path / 'ckpt'},lora=4", f"--workdir={workdir}",
       "--config.train.steps=4", "--config.train.checkpoint_every=2", "--config.train.log_every=1",
       "--config.data.seq_len=128", "--config.data.batch_size=8", "--config.loss.chunk_len=64",
       "--config.optim.warmup_steps=1", "--config.optim.learning_rate=1e-2", "--config.evals.held_out.every_steps=-1",
       "--config.evals.seen.every_steps=-1")
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in records)
  saved = ocp.PyTreeCheckpointer().metadata(str(workdir / "checkpoints" / "4" / "state")).item_metadata
  saved_params = [path for path, _ in jax.tree_util.tree_leaves_with_path(saved["params"])]
  assert saved_params and all("_lora_" in jax.tree_util.keystr(path) for path in saved_params)  # adapters alone

  _cli("flan_jax.convert", "export", f"--workdir={workdir}", f"--out={tmp_path / 'exported'}")
  tuned = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported"), dtype=torch.float32).eval()
  with torch.no_grad():
    before, after = base(ids).logits.numpy(), tuned(ids).logits.numpy()
  assert np.isfinite(after).all() and not np.allclose(before, after, atol=1e-3)
  assert (tmp_path / "exported" / "tokenizer.json").exists()


def write_gguf(path, model, tokenizer_dir, qtype, extra_tensors=None):
  """`model` (a transformers Llama) and its tokenizer as llama.cpp writes a GGUF file: gguf's tensor
  names, query/key rows interleaved for its rotary kernel, matrices in `qtype` (norms stay f32), the
  byte-level BPE vocabulary, merges and chat template as metadata; `extra_tensors` by GGUF name."""
  import gguf
  cfg = model.config
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_attention_heads)
  writer.add_head_count_kv(cfg.num_key_value_heads)
  writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
  tokenizer_json = json.loads((tokenizer_dir / "tokenizer.json").read_text())
  vocab = {**tokenizer_json["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}}
  special = {t["content"] for t in tokenizer_json["added_tokens"]}
  tokens = sorted(vocab, key=vocab.get)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(tokens)
  writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
  writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]])
  writer.add_bos_token_id(vocab["<|begin_of_text|>"])
  writer.add_eos_token_id(vocab["<|eot_id|>"])
  writer.add_add_bos_token(True)
  writer.add_chat_template(LLAMA3_CHAT_TEMPLATE)
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    array = tensor.numpy()
    if name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
      array = array.reshape(heads, 2, -1, array.shape[1]).swapaxes(1, 2).reshape(array.shape)
    gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
    if array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
      writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    else:
      writer.add_tensor(gguf_name, array)
  for gguf_name, array in (extra_tensors or {}).items():
    writer.add_tensor(gguf_name, np.asarray(array, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
  """A tiny random Llama 3-style model with its tokenizer and chat template: the HF model and directory."""
  from flan_jax.data import vocab
  from tests.helpers import load_config
  root = tmp_path_factory.mktemp("gguf")
  data = load_config("tiny").data
  vocab = make_hf_tokenizer(str(root / "hf"), vocab.tokenizer_texts(data, vocab.tokenizer_tasks(data), 1000),
                            chat_template=LLAMA3_CHAT_TEMPLATE)
  config = transformers.LlamaConfig(**{**SHAPE, "vocab_size": vocab}, tie_word_embeddings=True)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.3 * torch.randn_like(p)) if "norm" in name else p.normal_(0.0, 0.15)
  return root, model


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_gguf_import_gives_transformers_logits_and_tokens(gguf_model, qtype, tmp_path):
  """f32 and quantized GGUF files: our logits equal transformers' reading the same file, and the
  tokenizer and chat template come out as transformers builds them, but for the file's add_bos_token
  flag, which llama.cpp applies and transformers drops."""
  import gguf
  root, model = gguf_model
  path = tmp_path / f"model.{qtype}.gguf"
  write_gguf(path, model, root / "hf", gguf.GGMLQuantizationType[qtype])
  fields = convert.import_gguf(str(path), str(tmp_path / "ckpt"))
  info = checkpoint.read_info(str(tmp_path / "ckpt"))
  assert info["chat_format"] == "chat_template" and fields["dtype"] == "float32"
  _, params, _ = checkpoint.load_for_inference(fields, checkpoint_dir=str(tmp_path / "ckpt"))
  reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                                dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, fields["vocab_size"], (2, 24))
  with torch.no_grad():
    expected = reference(torch.tensor(tokens)).logits.numpy()
  global TOKENS
  saved, TOKENS = TOKENS, tokens
  try:
    np.testing.assert_allclose(our_logits(params, fields), expected, atol=1e-4, rtol=1e-5)
  finally:
    TOKENS = saved
  if qtype != "F32":  # quantization did change the weights: the comparison is with the dequantized ones
    with torch.no_grad():
      assert not np.allclose(model(torch.tensor(tokens)).logits.numpy(), expected, atol=1e-3)

  from flan_jax.data import tokenizer as tokenizer_lib
  ours = tokenizer_lib.load(str(tmp_path / "ckpt" / "hf"))
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
  text = "Premise: the cat sat on the mat."
  assert ours.encode_text(text) == [ours.bos_id] + theirs(text).input_ids
  messages = [{"role": "user", "content": "Is the cat on the mat?"}]
  assert ours.generation_prompt([("user", "Is the cat on the mat?")], "chat_template") == theirs.apply_chat_template(
      messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def test_gguf_rope_freqs_become_llama3_rope_scaling(gguf_model, tmp_path):
  """llama.cpp keeps Llama 3.x's rope scaling only as rope_freqs.weight, which transformers' GGUF
  reader ignores: it is imported as "llama3" rope parameters, and the logits equal transformers'
  model built with them (not the unscaled model's). A tensor no such parameters produce is refused."""
  import gguf
  root, base = gguf_model
  rope = {"rope_type": "llama3", "rope_theta": 10_000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
  config = transformers.LlamaConfig(**{**base.config.to_dict(), "rope_parameters": rope})
  scaled = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  scaled.load_state_dict(base.state_dict())
  divisors = convert.llama3_rope_factors(SHAPE["hidden_size"] // SHAPE["num_attention_heads"], 1e4, rope)
  assert 1 < np.sort(divisors)[-2] and ((divisors > 1) & (divisors < 8)).sum() >= 2
  path = tmp_path / "llama3.gguf"
  write_gguf(path, scaled, root / "hf", gguf.GGMLQuantizationType.F32, {"rope_freqs.weight": divisors})
  fields = convert.import_gguf(str(path), str(tmp_path / "ckpt"))
  assert (fields["rope_scaling_factor"], fields["rope_original_max_len"]) == (8.0, 64)
  _, params, _ = checkpoint.load_for_inference(fields, checkpoint_dir=str(tmp_path / "ckpt"))
  with torch.no_grad():
    expected = scaled(torch.tensor(TOKENS)).logits.numpy()
    unscaled = base(torch.tensor(TOKENS)).logits.numpy()
  assert not np.allclose(expected, unscaled, atol=1e-3)
  np.testing.assert_allclose(our_logits(params, fields), expected, atol=1e-4, rtol=1e-5)

  odd = tmp_path / "odd.gguf"
  write_gguf(odd, scaled, root / "hf", gguf.GGMLQuantizationType.F32,
             {"rope_freqs.weight": divisors[::-1]})
  with pytest.raises(ValueError, match=r"odd.gguf: tensor 'rope_freqs.weight' .* is not Llama 3's rope scaling"):
    convert.import_gguf(str(odd), str(tmp_path / "odd_ckpt"))


def test_bad_gguf_files_are_errors_naming_file_and_key(gguf_model, tmp_path):
  import gguf
  root, model = gguf_model
  bad_type = tmp_path / "q8_1.gguf"
  write_gguf(bad_type, model, root / "hf", gguf.GGMLQuantizationType.F32)
  writer = gguf.GGUFWriter(str(tmp_path / "gemma.gguf"), "gemma2")
  writer.add_block_count(1)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"gemma.gguf: general.architecture 'gemma2' is not supported"):
    convert.import_gguf(str(tmp_path / "gemma.gguf"), str(tmp_path / "out"))
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match=r"junk.gguf: not a readable GGUF file"):
    convert.import_gguf(str(tmp_path / "junk.gguf"), str(tmp_path / "out"))
  reader = convert.GGUFReader(str(bad_type), gguf.GGUFReader(str(bad_type)), model.config.to_dict())
  name = reader.gguf_name("model.layers.0.mlp.up_proj.weight")
  tensor = reader.tensors[name]
  q8_1 = gguf.GGMLQuantizationType.Q8_1
  block, size = gguf.GGML_QUANT_SIZES[q8_1]
  reader.tensors[name] = tensor._replace(tensor_type=q8_1, data=np.zeros((tensor.shape[1], tensor.shape[0] // block * size),
                                                                         np.uint8))
  with pytest.raises(ValueError, match=rf"q8_1.gguf: tensor '{name}' has type Q8_1, which the gguf package cannot"):
    reader.slice("model.layers.0.mlp.up_proj.weight")[:]


SMOLLM2_GGUF = os.environ.get("FLAN_JAX_SMOLLM2_GGUF")


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_GGUF, reason="FLAN_JAX_SMOLLM2_GGUF is unset (.ci/run fetches the real file)")
def test_real_smollm2_gguf_generates_as_transformers_does(tmp_path):
  """The real SmolLM2-135M-Instruct GGUF through the CLI: greedy completions, raw and in its own chat
  template, are transformers' greedy generations from the same file, as text."""
  _cli("flan_jax.convert", "import", f"--gguf={SMOLLM2_GGUF}", f"--out={tmp_path / 'ckpt'}")
  directory, name = os.path.split(SMOLLM2_GGUF)
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()

  def expected(ids, new):
    with torch.no_grad():
      prompt = torch.tensor([ids])
      out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False)[0, len(ids):]
    return tokenizer.decode(out.tolist(), skip_special_tokens=True).strip()

  for prompt in ("The capital of France is", "def fibonacci(n):"):
    stdout = _cli("flan_jax.generate", f"--checkpoint={tmp_path / 'ckpt'}", "--raw", f"--prompt={prompt}",
                  "--max_new_tokens=16")
    assert stdout.strip() == f"[step 0] {expected(tokenizer(prompt).input_ids, 16)}"
  for prompt in ("What is 2+2?", "Name a primary colour."):
    stdout = _cli("flan_jax.generate", f"--checkpoint={tmp_path / 'ckpt'}", f"--prompt={prompt}",
                  "--max_new_tokens=32")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
    assert stdout.strip() == f"[step 0] {expected(ids, 32)}"


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_each_family_completes_text_as_transformers_does(family, tmp_path):
  """Text in, text out: a random model of each family with a tokenizer of its family's kind (its BOS
  rule, special tokens and chat template), imported; greedy completions of a raw prompt and of a
  chat prompt are transformers' own, as text."""
  from flan_jax import decode
  from flan_jax.data import templates
  from flan_jax.data import tokenizer as tokenizer_lib
  model, reference = make_hf_chat_model(family, tmp_path / "hf")
  fields = convert.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
  assert checkpoint.read_info(str(tmp_path / "ckpt"))["chat_format"] == templates.CHAT_TEMPLATE
  _, params, _ = checkpoint.load_for_inference(fields, checkpoint_dir=str(tmp_path / "ckpt"))
  ours = tokenizer_lib.load(str(tmp_path / "ckpt" / "hf"))
  cfg = ModelConfig(**{**fields, "dtype": "float32"})
  conversation = [("user", "Is the cat on the mat?")]
  cases = [(ours.encode_text("The cat sat on"), reference("The cat sat on").input_ids),
           (ours.generation_prompt(conversation, templates.CHAT_TEMPLATE),
            reference.apply_chat_template([{"role": "user", "content": conversation[0][1]}], add_generation_prompt=True,
                                          return_dict=True)["input_ids"])]
  for ids, expected_ids in cases:
    assert ids == expected_ids
    [generated] = decode.generate(params, Decoder(cfg), [ids], max_new_tokens=8, stop_ids=ours.stop_ids, pad_id=0)
    with torch.no_grad():
      prompt = torch.tensor([ids])
      out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                           eos_token_id=list(ours.stop_ids), pad_token_id=ours.pad_id)[0, len(ids):].tolist()
    out = out[:next((i for i, t in enumerate(out) if t in ours.stop_ids), len(out))]
    assert ours.decode(generated.tolist()) == reference.decode(out, skip_special_tokens=True)
