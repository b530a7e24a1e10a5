"""Instruction tuning of an imported model on real, human-written multi-task data: the T0 training
mixture (P3; Sanh et al. 2022, *Multitask Prompted Training Enables Zero-Shot Task Generalization*)
as `{"prompt", "completion"}` JSONL files, one PromptSource template per file, several files per
dataset. Each dataset is one task (its files together: `<data>/<dataset>_*.jsonl`), in T0's task
clusters; whole clusters are held out and evaluated zero-shot before training (eval/0) and after.

  python -m flan_jax.train --config configs/t0.py:checkpoint=CKPT,data=../shared/real/t0_train

The model's own chat template and tokenizer, LoRA adapters on every projection (full fine-tuning
with lora=0). Arguments: checkpoint=DIR (from `flan_jax.convert import`), data=DIR (required: the
folder of the T0 files), lora=RANK, held_out=CLUSTER[+CLUSTER...], ifeval=FILE (IFEval-form prompts:
the ifeval evaluator at the start and the end; flan_jax/evaluators/ifeval.py).
"""

import os

from configs import common, finetune

# T0's clusters (its Figure 2), FLAN's names where they are FLAN's.
CLUSTERS = {
    "sentiment": ("amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes", "yelp"),
    "paraphrase": ("glue_mrpc", "glue_qqp", "paws"),
    "topic_classification": ("ag_news", "dbpedia"),  # trec: every completion in these files is empty
    "extractive_qa": ("adversarial_qa", "duorc", "quoref", "ropes"),
    "multiple_choice_qa": ("commonsense_qa", "cosmos_qa", "dream", "qasc", "quarel", "quartz", "sciq", "social_i_qa",
                           "wiki_hop", "wiqa"),
    "closed_book_qa": ("kilt", "wiki_qa"),
    "struct_to_text": ("common_gen", "wiki_bio"),
    "summarization": ("cnn_dailymail", "gigaword", "multi_news", "samsum", "xsum"),
}
METRICS = {  # the first is a task's headline score
    "sentiment": ("exact_match", "rouge"), "paraphrase": ("exact_match", "rouge"),
    "topic_classification": ("exact_match", "rouge"), "multiple_choice_qa": ("exact_match", "rouge"),
    "extractive_qa": ("f1", "exact_match"), "closed_book_qa": ("f1", "exact_match"),
    "struct_to_text": ("rouge",), "summarization": ("rouge",),
}
VALIDATION_ROWS = 20  # per dataset, the last rows of its last file: the seen clusters' evaluation set


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, checkpoint="", data="", lora=16, held_out="sentiment+paraphrase", ifeval="")
  if not arg["data"]:
    raise ValueError("configs/t0.py needs :data=DIR, the folder of the T0 training files "
                     "(<dataset>_*.jsonl, {\"prompt\", \"completion\"} rows)")
  config = finetune.get_config(f"checkpoint={arg['checkpoint']},lora={arg['lora']}")
  data = config.data
  data.mixture = ()
  data.local_tasks = tuple(
      dict(name=f"t0_{dataset}", path=os.path.join(arg["data"], f"{dataset}_*.jsonl"), format="prompt_completion",
           response_suffix="<|endoftext|>", cluster=cluster, metrics=METRICS[cluster],
           validation_rows=VALIDATION_ROWS)
      for cluster, datasets in CLUSTERS.items() for dataset in datasets)
  data.held_out_clusters = tuple(arg["held_out"].split("+"))
  data.seq_len = 512  # 12% of examples are longer: their prompts lose their oldest tokens
  data.rows_per_shard = 8  # 8 rows a step on one device, 8 more for each further data x fsdp shard
  data.shards = 8
  data.packing_bins = 16

  finetune.small_model_recipe(config, arg["lora"])
  config.train.microbatches = 2  # [rows, heads, length, length] attention scores of 30 layers per piece
  config.optim.warmup_steps = 10
  config.train.steps = 100
  config.train.log_every = 10
  config.train.checkpoint_every = 50

  for clusters in ("held_out", "seen"):  # per task: its first rows (held out) or its validation rows (seen)
    config.evals[clusters] = common.zero_shot(clusters, at_start=True, max_examples=16, batch_size=16,
                                              max_new_tokens=16)
  if arg["ifeval"]:
    with config.unlocked():
      config.evals.ifeval = common.ifeval(arg["ifeval"])
  return config
