"""What several test modules share: the repository's root, configs as the commands load them,
tokenizers and transformers models of each family, a small version of the tiny run (as flags for a
subprocess, as a config in-process) and its checks (kill -9 included), small models, made-up texts, answers files and
HTTP requests, and a free port. Test modules import from here, never from each other."""

import http.client
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import jax.numpy as jnp

from flan_jax import sharding
from flan_jax.data import packing
from flan_jax.model import Decoder, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's get_config(arg), as `--config configs/<name>.py:arg` would load it."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
]

# Llama 3's chat template, as its tokenizer_config.json ships it (less the tool-calling branches).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def make_hf_tokenizer(directory, texts, vocab_size=400, chat_template=None):
  """A byte-level BPE tokenizer.json with Llama 3's special tokens and its post-processor (BOS
  before every text), and its tokenizer_config.json, trained on `texts` with the `tokenizers`
  library, as a pretrained model directory carries it."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA3_SPECIAL,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer)
  bos = "<|begin_of_text|>"
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
      special_tokens=[(bos, tokenizer.token_to_id(bos))])
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  config = {"bos_token": bos, "eos_token": "<|eot_id|>", "pad_token": None}
  if chat_template:
    config["chat_template"] = chat_template
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return tokenizer.get_vocab_size()


# Small transformers models of the families flan_jax imports, and tokenizers of their kinds.
HF_FAMILIES = ("gemma", "llama", "mistral", "qwen2")
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, rms_norm_eps=1e-5)


def hf_config(family: str):
  """A transformers config of a small model of the family (one of HF_FAMILIES)."""
  import transformers
  # Llama 3.2-style: rope scaling (its original length short enough to matter) and tied embeddings.
  if family == "llama":
    return transformers.LlamaConfig(
        **SHAPE, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8, rope_theta=500_000.0))
  return {
      "mistral": lambda: transformers.MistralConfig(**SHAPE, sliding_window=5),
      "qwen2": lambda: transformers.Qwen2Config(**SHAPE, tie_word_embeddings=True),
      "gemma": lambda: transformers.GemmaConfig(**SHAPE, head_dim=24, hidden_act="gelu_pytorch_tanh"
                                                )
  }[family]()


# Chat templates as the families' tokenizer_config.json ship them.
FAMILY_CHAT_TEMPLATES = {
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
        "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
        "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
        "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
    ),
}
FAMILY_TOKENS = {  # bos, eos, the end of an assistant turn
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    "chatml": (None, "<|im_end|>", "<|im_end|>"),
    "gemma": ("<bos>", "<eos>", "<end_of_turn>"),
    "mistral": ("<s>", "</s>", "</s>"),
}
SPECIALS = [
    "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>",
    "<|im_end|>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<s>", "</s>"
]


def family_tokenizer(directory, family):
  """A byte-level BPE tokenizer with the family's special tokens, BOS rule and chat template."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  texts = ["The cat sat on the mat. Is the cat on the mat? Yes. Then where is the dog?"] * 10
  tokenizer.train_from_iterator(
      texts,
      trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  bos, eos, _ = FAMILY_TOKENS[family]
  if bos:
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))])
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(
      json.dumps({
          "bos_token": bos,
          "eos_token": eos,
          "chat_template": FAMILY_CHAT_TEMPLATES[family]
      }))


def make_hf_chat_model(family, directory):
  """(model, tokenizer) of transformers: a random model of the family with a tokenizer of its
  family's kind (its BOS rule, special tokens and chat template), saved in `directory`."""
  import torch
  import transformers
  family_tokenizer(directory, {
      "llama": "llama3",
      "mistral": "mistral",
      "qwen2": "chatml",
      "gemma": "gemma"
  }[family])
  reference = transformers.AutoTokenizer.from_pretrained(str(directory))
  config = hf_config(family)
  config.vocab_size = len(reference)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3) if p.ndim > 1 else None
  model.save_pretrained(directory)
  return model, reference


# A small, quick tiny run: 12 steps of a 2-layer d64 model, checkpoints every 4, the held-out
# evaluator (4 examples, one template) at the end, the seen one off.
SMALL_RUN = {
    "train.steps": 12,
    "train.log_every": 1,
    "train.checkpoint_every": 4,
    "data.seq_len": 128,
    "data.batch_size": 8,
    "data.tokenizer.vocab_size": 512,
    "data.tokenizer.num_texts": 3000,
    "model.d_model": 64,
    "model.num_layers": 2,
    "model.mlp_dim": 128,
    "loss.chunk_len": 64,
    "optim.warmup_steps": 2,
    "evals.seen.every_steps": -1,
    "evals.held_out.max_examples": 4,
    "evals.held_out.max_templates": 1,
}
# The same, as `python -m flan_jax.train` flags.
SMALL = [f"--config.{key}={value}" for key, value in SMALL_RUN.items()]


def small_run_config(**overrides):
  """The tiny config with SMALL_RUN and `overrides` (dotted keys, e.g. `**{"train.steps": 4}`)."""
  config = load_config("tiny")
  config.update_from_flattened_dict({**SMALL_RUN, **overrides})
  return config


def small_step_config(**train_overrides):
  """The tiny config with a 2-layer d32 f32 model of 64 tokens, for train-step tests on made-up
  batches."""
  config = load_config("tiny")
  config.model.update(
      dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           mlp_dim=64, dtype="float32", tie_embeddings=False))
  config.data.batch_size = 8
  config.loss.chunk_len = 8
  config.train.update(train_overrides)
  return config


def losses(workdir) -> dict[int, float]:
  """A run's training loss by step, from its metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def corrupt(workdir, step):
  """Cuts every file of checkpoint `step`'s state in half."""
  for directory, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def copy_tokenizer(source, workdir):
  """Gives `workdir` the tokenizer `source` trained, so that a run there does not train it again."""
  shutil.copytree(os.path.join(source, "tokenizer"), os.path.join(workdir, "tokenizer"))


def train_command(workdir, *overrides) -> list[str]:
  """`python -m flan_jax.train` of the small tiny run (SMALL) in `workdir`."""
  return [sys.executable, "-m", "flan_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}", *SMALL,
          *overrides]


def kill_9_after(command, workdir, steps: int) -> int:
  """Starts a train command and kills it (SIGKILL) once `workdir` logs `steps` records; returns the
  last step logged. Fails if a process it started (a data worker) outlives it by 30 s."""
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(metrics_path) and len(open(metrics_path).readlines()) >= steps:
      break
    time.sleep(0.05)
  children = _children(process.pid)
  process.send_signal(signal.SIGKILL)
  process.wait()
  deadline = time.time() + 30
  while time.time() < deadline and any(map(_running, children)):
    time.sleep(0.1)
  assert not any(map(_running, children)), f"processes {children} of the killed run still run"
  return max(losses(workdir))


def _children(pid: int) -> list[int]:
  stats = (p / "stat" for p in pathlib.Path("/proc").iterdir() if p.name.isdigit())
  return [int(s.parent.name) for s in stats if _stat_fields(s)[1:2] == [str(pid)]]


def _running(pid: int) -> bool:
  return _stat_fields(pathlib.Path(f"/proc/{pid}/stat"))[:1] not in ([], ["Z"])


def _stat_fields(path) -> list[str]:
  """/proc/<pid>/stat's state and parent pid, [] for a process gone."""
  try:
    return path.read_text().rsplit(")", 1)[1].split()[:2]
  except OSError:
    return []


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def small_model(vocab_size):
  """(Decoder, params): a 2-layer d32 f32 model, initialised with a fixed key."""
  cfg = ModelConfig(vocab_size=vocab_size, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, dtype="float32")
  zeros = jnp.zeros((1, 8), jnp.int32)
  return Decoder(cfg), jax.jit(Decoder(cfg).init)(jax.random.key(3), zeros, zeros, zeros)["params"]


def one_device_mesh():
  return sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


def brute_force_log_likelihood(model, params, tokens, weights, *, greedy: bool = False):
  """One full forward pass over one sequence, full log-softmax, summed over the weighted tokens;
  with `greedy`, also whether every weighted target is the argmax."""
  f = packing.example_features(tokens, weights)
  inputs = jnp.asarray(f["inputs"])[None]
  hidden = model.apply({"params": params}, inputs,
                       jnp.arange(inputs.shape[1])[None], jnp.ones_like(inputs))
  log_probs = jax.nn.log_softmax(
      hidden[0] @ model.apply({"params": params}, method=Decoder.unembedding))
  total = float(jnp.sum(log_probs[jnp.arange(len(f["targets"])), f["targets"]] * f["loss_weights"]))
  if not greedy:
    return total
  argmax = np.asarray(jnp.argmax(log_probs, axis=-1))
  return total, bool(np.all((argmax == f["targets"]) | (f["loss_weights"] == 0)))


# Made-up words for texts near-duplicate detection must tell apart.
VOCABULARY = [f"w{i}" for i in range(5000)]


def write_jsonl(path, rows) -> str:
  """Writes rows (JSON values, or bytes written as they are) one per line; returns the path."""
  path.write_bytes(b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows) + b"\n")
  return str(path)


def dropped(mix) -> dict[str, frozenset[int]]:
  """Per training task of a resolved mixture, the training indices it does not train on (where any)."""
  out = {}
  for task in mix.train:
    left_out = set(range(len(task.source(task.splits[0])))) - {int(i) for i in mix.kept[task.name]}
    if left_out:
      out[task.name] = frozenset(left_out)
  return out


def sentence(rng, length):
  """`length` words drawn from VOCABULARY with `rng` (a random.Random)."""
  return " ".join(rng.choice(VOCABULARY) for _ in range(length))


def lightly_edited(rng, text):
  """Case, punctuation and one word in every twenty changed: what copying between datasets does."""
  tokens = text.split()
  for i in range(0, len(tokens), 20):
    tokens[i] = rng.choice(VOCABULARY)
  return ", ".join(" ".join(tokens[i:i + 7]).upper() for i in range(0, len(tokens), 7)) + "?"


def write_answers(path, rows) -> str:
  """`rows` as a JSONL file at `path` (a pathlib.Path); its path as a string."""
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def request(port, method, path, body=None, headers=None):
  """(status, JSON or text) of one HTTP request to 127.0.0.1:port."""
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
  data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
  connection.request(method, path, body=data, headers={
      "Content-Type": "application/json",
      **(headers or {})
  })
  response = connection.getresponse()
  payload = response.read()
  connection.close()
  return response.status, (json.loads(payload) if response.getheader(
      "Content-Type", "").startswith("application/json") else payload.decode())


def write_harness_tasks(directory) -> str:
  """lm-evaluation-harness task files over one local JSONL of 12 rows, in `directory`: tiny_mc
  (multiple choice: acc, acc_norm), tiny_gen (greedy generation to a newline or full stop) and
  tiny_rolling (loglikelihood_rolling over 40-word texts). Returns the directory."""
  rng = np.random.default_rng(0)
  words = "cat dog mat sun moon red blue tree house river apple stone".split()
  rows = [{"question": " ".join(rng.choice(words, 5)),
           "choices": [" ".join(rng.choice(words, rng.integers(1, 4))) for _ in range(3)],
           "answer": i % 3, "text": " ".join(rng.choice(words, 40))} for i in range(12)]
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {directory / 'rows.jsonl'}\n"
            "test_split: test\n")
  (directory / "mc.yaml").write_text(
      f"task: tiny_mc\n{common}output_type: multiple_choice\n"
      "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\n"
      "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  (directory / "gen.yaml").write_text(
      f"task: tiny_gen\n{common}output_type: generate_until\n"
      "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \"{{choices[answer]}}\"\n"
      "generation_kwargs:\n  until: [\"\\n\", \".\"]\n  max_gen_toks: 12\n"
      "metric_list:\n  - metric: exact_match\n")
  (directory / "rolling.yaml").write_text(
      f"task: tiny_rolling\n{common}output_type: loglikelihood_rolling\n"
      "doc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: bits_per_byte\n")
  return str(directory)
