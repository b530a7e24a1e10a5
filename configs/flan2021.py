# python -m flan_jax.train --config configs/flan2021.py:held_out=nli,model=llama3_2_1b
"""FLAN 2021: the TFDS mixture with one cluster held out, at a real model size.

The TFDS datasets must already be prepared in TFDS's data directory (nothing is
downloaded at run time). Sizes follow the FLAN paper where it states them:
examples capped at 3,000 per task, Adafactor at a constant 3e-5, packed rows.
"""

from configs import common, models, tiny


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, held_out="nli", model="llama3_2_1b")
  config = tiny.get_config()

  config.data.mixture = ("flan2021",)
  config.data.held_out_clusters = (arg["held_out"],)
  config.data.seq_len = 2048
  config.data.batch_size = 64
  config.data.packing_bins = 256
  config.data.template.max_templates = 10
  config.data.tokenizer.vocab_size = 32_000
  config.data.tokenizer.num_texts = 200_000

  with config.unlocked():
    config.model = models.get(arg["model"], vocab_size=config.data.tokenizer.get_ref("vocab_size"))
  config.model.remat = "full"
  config.model.scan_layers = True

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
