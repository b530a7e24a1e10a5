"""FLAN 2021 (Wei et al. 2021): instruction tuning of a pretrained model on the TFDS mixture, one
cluster held out.

  python -m flan_jax.train --config configs/flan2021.py:checkpoint=/ckpts/llama3_2_1b,held_out=nli

As the paper does it: a pretrained checkpoint (imported with `python -m flan_jax.convert import`)
with its own tokenizer, vocabulary and positions; Adafactor at a constant 3e-5; examples capped at
3,000 per task; packed rows of 8,192 tokens a batch by default (the paper: 8,192 tokens, input 1,024
and target 256 per example). `checkpoint=` empty trains the `model=` preset from random
initialisation with a SentencePiece tokenizer trained on the mixture: the recipe alone, for systems
work, not FLAN.

The TFDS datasets must already be prepared in TFDS's data directory (nothing is downloaded at run
time). Arguments: checkpoint=DIR, held_out=CLUSTER, model=PRESET (without a checkpoint).
"""

from configs import common, finetune, tiny
from flan_jax import presets


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, checkpoint="", held_out="nli", model="llama3_2_1b")
  if arg["checkpoint"]:
    config = finetune.get_config(f"checkpoint={arg['checkpoint']},held_out={arg['held_out']}")
    config.data.template.format = "flan"  # FLAN's instruction templates, with the model's BOS/EOS
  else:
    config = tiny.get_config()
    config.data.tokenizer.vocab_size = 32_000
    config.data.tokenizer.num_texts = 200_000
    with config.unlocked():
      config.model = presets.get(arg["model"], vocab_size=config.data.tokenizer.get_ref("vocab_size"))

  config.data.mixture = ("flan2021",)
  config.data.held_out_clusters = (arg["held_out"],)
  config.data.max_examples_per_task = 30_000  # FLAN 2021's limit per dataset (its mixing cap: 3k)
  config.data.seq_len = 1024
  # 1,024 tokens per data x fsdp shard: 8,192 a step on 8 chips (the paper's batch), 65,536 on a v5p-64.
  config.data.rows_per_shard = 1
  config.data.packing_bins = 64
  config.data.template.max_templates = 10

  config.model.remat = "full"
  config.model.scan_layers = not arg["checkpoint"]  # imports are stored layer by layer (convert --scan_layers)

  config.mesh.data, config.mesh.fsdp = 1, -1
  config.loss.chunk_len = 256
  config.loss.z_loss = 1e-4

  config.optim.name = "adafactor"
  config.optim.learning_rate = 3e-5
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.optim.weight_decay = 0.0

  config.train.steps = 30_000
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  return config
