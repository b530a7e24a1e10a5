"""Instruction tuning of a pretrained model imported with `python -m flan_jax.convert import`.

  python -m flan_jax.train --config configs/finetune.py:checkpoint=/ckpts/llama3_2_1b,lora=16

flan_mini (one cluster held out) in the model's own chat format and tokenizer;
full fine-tuning, or LoRA adapters of rank `lora` on the attention projections
with the base frozen. Arguments: checkpoint=DIR (required), lora=RANK (0: full),
held_out=CLUSTER. DIR may also be a training run's workdir (e.g. an SFT run, then DPO): its newest
weights, a LoRA run's adapters folded in (checkpoint.restore_pretrained), with its tokenizer and
format.

`small_model_recipe` is the LoRA and optimiser block that configs/t0.py and
configs/self_instruct.py share: a small model tuned on real data for a few hundred steps.
"""


import ml_collections

from configs import common, tiny
from flan_jax import checkpoint
from flan_jax.model import ModelConfig


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, checkpoint="", lora=0, held_out="nli")
  if not arg["checkpoint"]:
    raise ValueError("configs/finetune.py needs :checkpoint=DIR, a directory written by "
                     "python -m flan_jax.convert import (or a run's workdir to go on from)")
  info = checkpoint.read_info(arg["checkpoint"])
  config = tiny.get_config()
  config.data.held_out_clusters = (arg["held_out"],)
  config.data.template.format = info["chat_format"]
  config.data.tokenizer.model = info["tokenizer"]

  with config.unlocked():
    defaults = ModelConfig(**info["model"]).__dict__
    config.model = ml_collections.ConfigDict({**defaults, "lora_targets": tuple(defaults["lora_targets"])})
  # Training computes in what the hardware multiplies fastest (bf16 on TPUs and GPUs, where `auto`
  # attention then picks Splash or cuDNN; 1.5x on an AMX CPU), not in the import's own dtype (f32
  # for f32 and GGUF checkpoints, which generate and evaluate keep so that logits match transformers').
  config.model.dtype = "auto"
  config.model.lora_rank = arg["lora"]
  config.model.remat = "full"
  config.train.init_from = arg["checkpoint"]

  config.mesh.data, config.mesh.fsdp = 1, -1
  config.optim.learning_rate = 2e-4 if arg["lora"] else 2e-5
  config.optim.weight_decay = 0.0
  config.train.steps = 1000
  config.train.checkpoint_every = 200
  return config


def small_model_recipe(config, lora: int):
  """Sets `config` (a finetune config) for a small imported model (~100M-1B) on real data: LoRA of
  rank `lora` on every projection (0: full fine-tuning), no rematerialisation (the activations fit;
  recomputing would cost a third more time), AdamW at a constant rate after the config's warm-up."""
  config.model.lora_targets = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
  config.model.remat = "none"
  config.optim.learning_rate = 1e-4 if lora else 1e-5
  config.optim.schedule = "constant"
