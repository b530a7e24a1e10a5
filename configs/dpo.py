"""Preference tuning with DPO (flan_jax/dpo.py) of a model imported with `python -m flan_jax.convert
import` or instruction-tuned by an earlier run: LoRA adapters over its frozen base, which is also
DPO's reference model; or with lora=0 all its weights, the reference log-probabilities computed
once before training (flan_jax/dpo_reference.py).

  python -m flan_jax.train --config configs/dpo.py:checkpoint=CKPT,pairs=pairs.jsonl

`pairs`: a file of preference pairs (the `preference` format of
flan_jax/data/sources/local_files.py: TRL's prompt/chosen/rejected, as strings or messages; JSONL,
JSON or Parquet), rendered in the model's own chat format. Its last `held_out` rows (per file) are
not trained on: the `preference` evaluator scores them before training and after (reward and
likelihood accuracy, with intervals).
With judge=CKPT and prompts=FILE (JSONL {"prompt"[, "category"]}) a pairwise evaluator, `judged`,
also answers those prompts at the start and the end, and the judge compares the two: the DPO
model's win rate over its starting point, with its interval (eval/<last>/judged/judge.json).
Arguments: checkpoint=DIR (an imported model, or an SFT run's workdir: configs/finetune.py) and
pairs=FILE (required), lora=RANK (default 16; 0: full fine-tuning), held_out=ROWS (default 200),
beta (default 0.1), judge=CKPT and prompts=FILE (both or neither).
"""

import ml_collections

from configs import common, finetune


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, checkpoint="", pairs="", lora=16, held_out=200, beta=0.1, judge="",
                         prompts="")
  if not arg["pairs"]:
    raise ValueError(
        "configs/dpo.py needs :pairs=FILE, a file of preference pairs (prompt, chosen, rejected)")
  config = finetune.get_config(f"checkpoint={arg['checkpoint']},lora={arg['lora']}")
  data = config.data
  data.mixture, data.held_out_clusters = (), ()
  data.local_tasks = ({
      "name": "pairs",
      "path": arg["pairs"],
      "format": "preference",
      "cluster": "preference",
      "validation_rows": arg["held_out"]
  }, )
  data.seq_len = 1024  # both answers of a pair share a row
  data.rows_per_shard = 8
  data.packing_bins = 16

  finetune.small_model_recipe(config, arg["lora"])
  config.loss.kind = "dpo"
  config.loss.dpo_beta = arg["beta"]
  config.optim.learning_rate = 5e-5 if arg["lora"] else 1e-6
  config.optim.warmup_steps = 10
  config.train.microbatches = 2
  config.train.steps = 300
  config.train.log_every = 10
  config.train.checkpoint_every = 100
  with config.unlocked():
    config.evals = ml_collections.ConfigDict({"preference": common.preference()})
  common.add_judged(config, arg, "dpo", max_new_tokens=128)
  return config
