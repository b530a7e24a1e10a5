"""The embedded default: flan_mini with the NLI cluster held out, sized for a laptop CPU.

  python -m flan_jax.train --config configs/tiny.py
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from flan_jax import presets
from flan_jax.data import templates


def get_config(arg: str | None = None):
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0

  data = config.data = ml_collections.ConfigDict()
  data.mixture = ("flan_mini",)  # registered mixture or task names
  data.local_tasks = ()  # see flan_jax/data/sources/local_files.py
  data.weights = {}  # task or mixture name -> rate, replacing the examples-proportional one
  data.max_examples_per_task = 0  # > 0: a task contributes at most this many (a fixed random draw)
  data.example_cap = 3000  # FLAN's cap on examples counted per task
  data.temperature = 1.0
  data.held_out_clusters = ("nli",)
  data.skip_bad_records = False
  data.seq_len = 512
  data.batch_size = 16  # packed rows per step, all processes together
  data.rows_per_shard = 0  # > 0: data.batch_size is this many rows per data x fsdp shard of the mesh
  data.shards = 8  # independently packed parts of the stream; a multiple of the process count
  data.truncation = "prompt_left"
  data.packer = "best_fit"
  data.packing_bins = 64
  data.prepared = ""  # a `python -m flan_jax.data prepare` directory: read its shards, no scan
  data.num_workers = 0  # > 0: Grain worker processes building batches (the order depends on it)

  # Training examples that overlap evaluation instances (flan_jax/data/decontamination.py, Tülu 3's rule).
  data.decontamination = ml_collections.ConfigDict()
  data.decontamination.mode = "drop"  # off | report | drop (the contaminating training examples)
  data.decontamination.ngram = 8  # words per n-gram, after normalisation
  data.decontamination.threshold = 0.5  # share of an instance's words its shared n-grams must cover
  data.decontamination.include_seen = False  # also the training clusters' validation splits
  data.decontamination.evaluation_files = ()  # local-file specs of evaluation sets: checked, never trained on
  data.decontamination.max_drop_fraction = 0.5  # dropping more of any task is an error

  # Duplicate training examples (flan_jax/data/deduplication.py): off | exact (normalised prompt and answer) |
  # near (also prompts sharing n-grams over more than `threshold` of their words with a kept one).
  data.deduplication = ml_collections.ConfigDict(dict(mode="exact", ngram=8, threshold=0.5))

  data.template = ml_collections.ConfigDict()
  data.template.style = "instructions"  # instructions | task_name | none: FLAN 2021's ablation (templates.styled)
  data.template.format = "flan"  # flan | alpaca | chat | llama3 | chatml | gemma | mistral (templates.FORMATS)
  data.template.format_mix = {}  # format -> weight, drawn per training example; empty: `format` only
  data.template.options = True  # OPTIONS suffix on classification prompts
  data.template.inverted = True  # train on turned-around templates too
  data.template.max_templates = 0  # templates per task (0: all)
  # Flan 2022 trains on all three settings; chain_of_thought renders zero-shot where a task has no rationale.
  data.template.prompt_mix = dict(zero_shot=1.0, few_shot=0.0, chain_of_thought=0.0)
  data.template.num_shots = 3  # exemplars in a few-shot rendering
  data.template.few_shot_max_tokens = 400
  data.template.preambles = templates.PREAMBLES  # system texts drawn with preamble_rate
  data.template.preamble_rate = 0.0
  data.template.omit_input_rate = 0.0  # an input turn joined to the instruction: no separate Input block

  data.tokenizer = ml_collections.ConfigDict()
  data.tokenizer.model = ""  # .model, tokenizer.json or a directory of either; empty: train one, cached in the workdir
  # A trained tokenizer reads the training splits of these tasks (empty: data.mixture and local tasks) outside
  # these clusters (None: data.held_out_clusters); a sweep fixes what its runs vary, so that all share one.
  data.tokenizer.mixture = ()
  data.tokenizer.held_out_clusters = config_dict.placeholder(tuple)
  data.tokenizer.vocab_size = 1024
  data.tokenizer.num_texts = 20000
  data.tokenizer.pad_id = -1  # -1: the model's own id
  data.tokenizer.eos_id = -1
  data.tokenizer.bos_id = -1
  # The day chat templates' strftime_now renders (Llama 3.x's system line), fixed: not the clock's.
  data.tokenizer.chat_template_date = templates.CHAT_TEMPLATE_DATE

  config.model = presets.get("tiny", vocab_size=data.tokenizer.get_ref("vocab_size"))

  # Multi-process runs: an explicit coordinator, or "" for what JAX detects (SLURM, MPI, GKE, TPU VMs; distributed.py).
  config.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: the remaining devices
  # Multi-slice TPU (or multi-host GPU): of each axis, how many groups talk over the slower data-centre
  # network (slices; hosts where devices have no slice). mesh.data and mesh.fsdp stay the whole sizes.
  config.mesh.dcn_data = 1
  config.mesh.dcn_fsdp = 1
  config.sharding_rules = "fsdp_tp"  # dp | fsdp | tp | fsdp_tp (flan_jax/sharding.py)

  config.loss = ml_collections.ConfigDict()
  config.loss.normalization = "token"  # token | example | constant (batch_size * seq_len)
  config.loss.z_loss = 0.0
  config.loss.label_smoothing = 0.0
  config.loss.chunk_len = 128  # positions per chunk of the fused vocabulary projection
  config.loss.kind = "cross_entropy"  # or "dpo": preference pairs (flan_jax/dpo.py)
  config.loss.dpo_beta = 0.1
  config.loss.dpo_variant = "sigmoid"  # sigmoid (DPO) | ipo
  config.loss.dpo_length_normalize = False  # mean, not summed, answer-token log-probabilities
  config.loss.dpo_sft_weight = 0.0  # plus this times the chosen answers' token nll
  # DPO's reference model: adapters_off (LoRA's base, free) | precomputed (a pass before training,
  # stored in the workdir: flan_jax/dpo_reference.py) | frozen_copy (full fine-tuning: a second,
  # frozen copy of the weights) | auto (adapters_off with LoRA, else precomputed)
  config.loss.dpo_reference = "auto"

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adamw"  # adamw | adafactor
  config.optim.learning_rate = 3e-3
  config.optim.schedule = "cosine"  # constant | cosine | linear
  config.optim.warmup_steps = 20
  config.optim.final_lr_fraction = 0.1
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.eps = 1e-8
  config.optim.weight_decay = 0.01
  config.optim.clip_norm = 1.0  # 0: no clipping

  config.train = ml_collections.ConfigDict()
  config.train.steps = 200
  config.train.microbatches = 1  # gradient accumulation: the batch in this many sequential pieces
  config.train.log_every = 10
  config.train.checkpoint_every = 100
  config.train.keep_checkpoints = 3
  # A checkpoint directory (e.g. an import) or a run's workdir whose newest weights start the run.
  config.train.init_from = ""
  config.train.skip_nonfinite = False  # NaN/Inf loss: False stops the run, True skips that update

  # Evaluators, each at its own cadence (flan_jax/evaluators/common.py): every_steps N (and after the
  # last step), 0 (after the last step only) or -1 (never); at_start: also step 0, before training.
  config.evals = ml_collections.ConfigDict()
  config.evals.held_out = common.zero_shot("held_out")  # FLAN's zero-shot score
  config.evals.seen = common.zero_shot("seen")  # the training clusters' validation splits
  config.lock()
  return config
