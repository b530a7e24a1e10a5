import pytest

from tests.helpers import load_config


def test_configs_are_locked_and_typed(tiny_config):
  with pytest.raises(AttributeError, match="stepz"):
    tiny_config.train.stepz = 3
  with pytest.raises(TypeError):
    tiny_config.train.steps = "many"


def test_model_vocabulary_follows_the_tokenizer(tiny_config):
  tiny_config.data.tokenizer.vocab_size = 777
  assert tiny_config.model.vocab_size == 777


def test_flan2021_takes_its_held_out_cluster_and_model_from_the_argument():
  config = load_config("flan2021", "held_out=sentiment,model=llama3_8b")
  assert config.data.mixture == ("flan2021",) and config.data.held_out_clusters == ("sentiment",)
  assert config.model.d_model == 4096 and config.model.vocab_size == 128_256
  assert load_config("flan2021").data.held_out_clusters == ("nli",)
  small = load_config("flan2021", "model=tiny")
  assert small.model.d_model == 128 and small.model.vocab_size == 32_000
  with pytest.raises(ValueError, match="'heldout=nli'.*held_out, model"):
    load_config("flan2021", "heldout=nli")


def test_finetune_config_reads_an_imported_checkpoint(tmp_path):
  import json

  from flan_jax import workdirs
  fields = dict(vocab_size=96, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                qkv_bias=True, dtype="float32")
  (tmp_path / "model.json").write_text(json.dumps({"model": fields, "family": "qwen2", "chat_format": "chatml"}))
  config = load_config("finetune", f"checkpoint={tmp_path},lora=8,held_out=sentiment")
  assert config.model.qkv_bias and config.model.d_model == 64 and config.model.lora_rank == 8
  assert config.model.dtype == "auto"  # trained in what the hardware multiplies fastest, not the import's f32
  assert config.train.init_from == str(tmp_path) and config.data.tokenizer.model == str(tmp_path / "hf")
  assert config.data.template.format == "chatml" and config.data.held_out_clusters == ("sentiment",)
  with pytest.raises(ValueError, match="needs :checkpoint=DIR"):
    load_config("finetune")
  with pytest.raises(FileNotFoundError, match="model.json does not exist"):
    load_config("finetune", f"checkpoint={tmp_path / 'missing'}")
  assert workdirs.default("configs/finetune.py:checkpoint=/ckpts/q,lora=8") == "workdirs/finetune_checkpoint=_ckpts_q,lora=8"


def _fake_import(directory, chat_format="chat_template"):
  import json
  fields = dict(vocab_size=96, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)
  (directory / "model.json").write_text(json.dumps({"model": fields, "family": "llama", "chat_format": chat_format}))


def test_a_run_s_workdir_is_a_checkpoint_to_go_on_from(tmp_path):
  """An SFT run's workdir as configs/dpo.py's checkpoint: its model (adapters folded in), format and
  tokenizer; a directory that is neither is an error saying what it expected."""
  sft = load_config("tiny")
  sft.model.lora_rank, sft.data.template.format = 8, "llama3"
  sft.data.tokenizer.model = "/imported/hf"
  (tmp_path / "config.json").write_text(sft.to_json())
  config = load_config("dpo", f"checkpoint={tmp_path},pairs=/p.jsonl,lora=4")
  assert config.train.init_from == str(tmp_path) and config.data.tokenizer.model == "/imported/hf"
  assert config.data.template.format == "llama3" and config.model.lora_rank == 4
  assert config.model.d_model == sft.model.d_model
  with pytest.raises(FileNotFoundError, match="or a training run's workdir"):
    load_config("dpo", f"checkpoint={tmp_path / 'nothing'},pairs=/p.jsonl")


def test_flan2021_fine_tunes_an_imported_checkpoint_with_its_tokenizer(tmp_path):
  _fake_import(tmp_path)
  config = load_config("flan2021", f"checkpoint={tmp_path},held_out=sentiment")
  assert config.train.init_from == str(tmp_path) and config.data.tokenizer.model == str(tmp_path / "hf")
  assert config.model.vocab_size == 96 and not config.model.scan_layers  # the checkpoint's, not a preset's
  assert config.optim.name == "adafactor" and config.optim.learning_rate == 3e-5 and config.optim.schedule == "constant"
  # 1,024 tokens per data x fsdp shard: 8,192 a step on 8 chips, the paper's batch.
  assert config.data.rows_per_shard * config.data.seq_len == 1024 and config.data.held_out_clusters == ("sentiment",)
  assert config.data.template.format == "flan"


def test_t0_config_has_one_task_per_dataset_in_t0_clusters(tmp_path):
  _fake_import(tmp_path)
  config = load_config("t0", f"checkpoint={tmp_path},data=/t0,held_out=sentiment+summarization")
  specs = {s["name"]: s for s in config.data.local_tasks}
  assert specs["t0_imdb"]["path"] == "/t0/imdb_*.jsonl" and specs["t0_imdb"]["cluster"] == "sentiment"
  assert specs["t0_xsum"]["metrics"] == ("rouge",) and config.data.held_out_clusters == ("sentiment", "summarization")
  assert config.data.template.format == "chat_template" and config.evals.held_out.at_start and config.model.lora_rank == 16
  with pytest.raises(ValueError, match="configs/t0.py needs :data=DIR"):  # no default outside the repository
    load_config("t0", f"checkpoint={tmp_path}")


def test_self_instruct_config_trains_on_generated_rows_and_holds_out_the_seeds(tmp_path):
  _fake_import(tmp_path)
  config = load_config("self_instruct", f"checkpoint={tmp_path},data=/g.jsonl,seeds=/s.jsonl")
  specs = {s["name"]: s for s in config.data.local_tasks}
  assert specs["self_instruct"]["cluster_field"] == "category" and specs["self_instruct"]["path"] == "/g.jsonl"
  assert specs["seed_tasks"]["format"] == "instances" and config.data.held_out_clusters == ("human_seeds",)
  assert config.evals.held_out.at_start and config.model.lora_rank == 16
  with pytest.raises(ValueError, match="needs :data=FILE"):
    load_config("self_instruct", f"checkpoint={tmp_path}")
  assert "judged" not in config.evals
  judged = load_config("self_instruct", f"checkpoint={tmp_path},data=/g.jsonl,seeds=/s.jsonl,judge=/j,prompts=/p.jsonl")
  assert judged.evals.judged.type == "pairwise" and judged.evals.judged.judge == "/j" and judged.evals.judged.at_start
  with pytest.raises(ValueError, match="judge=CKPT and prompts=FILE go together"):
    load_config("self_instruct", f"checkpoint={tmp_path},data=/g.jsonl,seeds=/s.jsonl,judge=/j")


@pytest.mark.parametrize("lora", [16, 0])
def test_t0_and_self_instruct_share_the_small_model_recipe(tmp_path, lora):
  _fake_import(tmp_path)
  t0 = load_config("t0", f"checkpoint={tmp_path},data=/t0,lora={lora}")
  self_instruct = load_config("self_instruct", f"checkpoint={tmp_path},data=/g.jsonl,seeds=/s.jsonl,lora={lora}")
  for key in ("model.lora_targets", "model.lora_rank", "model.remat", "optim.learning_rate", "optim.schedule"):
    section, name = key.split(".")
    assert t0[section][name] == self_instruct[section][name], key
  assert len(t0.model.lora_targets) == 7 and t0.optim.learning_rate == (1e-4 if lora else 1e-5)
  assert "ifeval" not in t0.evals and "ifeval" not in self_instruct.evals


def test_t0_and_self_instruct_take_an_ifeval_file(tmp_path):
  """ifeval=FILE adds the IFEval evaluator, on the starting model and after the last step."""
  _fake_import(tmp_path)
  for name, arg in (("t0", "data=/t0"), ("self_instruct", "data=/g.jsonl,seeds=/s.jsonl")):
    config = load_config(name, f"checkpoint={tmp_path},{arg},ifeval=/ifeval.jsonl")
    entry = config.evals.ifeval
    assert (entry.type, entry.prompts, entry.at_start, entry.every_steps) == ("ifeval", "/ifeval.jsonl", True, 0)


def test_dpo_config_trains_on_a_pairs_file_and_scores_its_held_out_rows(tmp_path):
  _fake_import(tmp_path)
  config = load_config("dpo", f"checkpoint={tmp_path},pairs=/p.jsonl,held_out=50,beta=0.2")
  (spec,) = config.data.local_tasks
  assert (spec["format"], spec["path"], spec["validation_rows"]) == ("preference", "/p.jsonl", 50)
  assert config.loss.kind == "dpo" and config.loss.dpo_beta == 0.2 and config.model.lora_rank == 16
  assert list(config.evals) == ["preference"] and config.evals.preference.at_start
  assert config.data.mixture == () and config.data.held_out_clusters == ()
  with pytest.raises(ValueError, match="needs :pairs=FILE"):
    load_config("dpo", f"checkpoint={tmp_path}")
  full = load_config("dpo", f"checkpoint={tmp_path},pairs=/p.jsonl,lora=0")
  assert full.model.lora_rank == 0 and full.loss.dpo_reference == "auto"  # precomputed, then
  assert full.optim.learning_rate < config.optim.learning_rate
  judged = load_config("dpo", f"checkpoint={tmp_path},pairs=/p.jsonl,judge=/j,prompts=/q.jsonl")
  assert (judged.evals.judged.type, judged.evals.judged.prompts) == ("pairwise", "/q.jsonl")
  assert "judged" not in config.evals and judged.evals.judged.at_start
  with pytest.raises(ValueError, match="configs/dpo.py: judge=CKPT and prompts=FILE go together"):
    load_config("dpo", f"checkpoint={tmp_path},pairs=/p.jsonl,prompts=/q.jsonl")


def test_every_config_docstring_carries_the_command_that_runs_it():
  import importlib.util
  import pathlib

  from tests.helpers import ROOT
  paths = sorted(pathlib.Path(ROOT, "configs").rglob("*.py"))
  for path in paths:
    if path.name in ("__init__.py", "common.py"):
      continue
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    relative = path.relative_to(ROOT).as_posix()
    assert f"--config configs/{relative.removeprefix('configs/')}" in (module.__doc__ or ""), relative
