r"""Instruction tuning on Self-Instruct data (Wang et al. 2022, *Self-Instruct: Aligning Language
Models with Self-Generated Instructions*) written by `python -m flan_jax.self_instruct`:

  python -m flan_jax.train \
      --config configs/self_instruct.py:checkpoint=CKPT,data=generated.jsonl,seeds=seed_tasks.jsonl

The human-written seed tasks are held out: the model is evaluated on prompts people wrote, which no
training example was allowed to resemble (ROUGE-L <= 0.7), before training (eval/0) and after.

Each evaluation writes the answers (eval/<step>/answers/). With judge=CKPT and prompts=FILE (JSONL
{"prompt"[, "category"]}) a pairwise evaluator, `judged`, also answers those prompts at the start
and the end, and the judge compares the two (eval/<last>/judged/judge.json; eval/judged/win_rate in
the metrics). Two answer sets are also one command apart:
  python -m flan_jax.judge --judge CKPT --answers_a WORKDIR/eval/<last>/answers \
      --answers_b WORKDIR/eval/0/answers --out WORKDIR/judged

Arguments: checkpoint=DIR (from `flan_jax.convert import`), data=FILE (self_instruct's output),
seeds=FILE (the seed tasks, Self-Instruct's format), lora=RANK (0: full fine-tuning), judge=CKPT and
prompts=FILE (both or neither), ifeval=FILE (IFEval-form prompts: the ifeval evaluator at the start and
the end; flan_jax/evaluators/ifeval.py).
"""

from configs import common, finetune


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, checkpoint="", data="", seeds="", lora=16, judge="", prompts="", ifeval="")
  if not arg["data"] or not arg["seeds"]:
    raise ValueError("configs/self_instruct.py needs :data=FILE (flan_jax.self_instruct's output) and "
                     ":seeds=FILE (the seed tasks)")
  config = finetune.get_config(f"checkpoint={arg['checkpoint']},lora={arg['lora']}")
  data = config.data
  data.mixture = ()
  data.local_tasks = (
      # Categories "classification" and "generation", one task each.
      dict(name="self_instruct", path=arg["data"], format="alpaca", cluster_field="category"),
      dict(name="seed_tasks", path=arg["seeds"], format="instances", cluster="human_seeds", metrics=("rouge",)),
  )
  data.held_out_clusters = ("human_seeds",)
  data.seq_len = 512
  data.batch_size = 8

  finetune.small_model_recipe(config, arg["lora"])
  config.optim.warmup_steps = 2
  config.train.steps = 20
  config.train.log_every = 5
  config.train.checkpoint_every = 10

  config.evals.held_out = common.zero_shot("held_out", at_start=True, max_examples=40,  # 40 seed tasks
                                           batch_size=8, max_new_tokens=96)
  config.evals.seen.every_steps = -1
  common.add_judged(config, arg, "self_instruct", max_new_tokens=96)
  if arg["ifeval"]:
    with config.unlocked():
      config.evals.ifeval = common.ifeval(arg["ifeval"])
  return config
