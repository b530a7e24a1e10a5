import json
import os
import subprocess
import sys

import pytest

from flan_jax import sweep
from tests.helpers import ROOT

MICRO_SWEEP = '''
from configs import tiny


def get_config(arg=None):
  config = tiny.get_config()
  config.train.steps = 3
  config.train.checkpoint_every = 3
  config.data.seq_len = 128
  config.data.batch_size = 8
  config.data.tokenizer.vocab_size = 512
  config.data.tokenizer.num_texts = 2000
  config.data.tokenizer.held_out_clusters = ()  # one tokenizer for runs that hold out different clusters
  config.model.update(dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64))
  config.loss.chunk_len = 64
  config.evals.seen.every_steps = -1
  config.evals.held_out.update(max_examples=3, max_templates=1)
  return config


def get_sweep():
  return [{"data.held_out_clusters": ("nli",)}, {"data.held_out_clusters": ("sentiment",), "train.steps": 2}]
'''


def test_run_names_and_override_flags():
  overrides = {"data.held_out_clusters": ("nli", "misc"), "train.steps": 5, "data.template.format": "chat"}
  assert sweep.run_name(overrides) == "held_out_clusters=nli,misc_steps=5_format=chat"
  assert sweep.override_flags(overrides) == ["--config.data.held_out_clusters=('nli', 'misc')",
                                             "--config.train.steps=5", "--config.data.template.format=chat"]
  assert sweep.launch_command("slurm", ["python3", "-m", "x"], None, None) == [
      "sbatch", "launch/slurm.sbatch", "python", "-m", "x"]


def test_override_flags_parse_to_the_values():
  overrides = {"data.held_out_clusters": ("nli", "misc"), "train.steps": 5, "data.template.style": "none",
               "data.template.format_mix": {"flan": 1.0, "chat": 2.0}}
  parse = ("import json, sys\nfrom absl import flags\nfrom ml_collections import config_flags\n"
           "config_flags.DEFINE_config_file('config')\nflags.FLAGS(sys.argv)\nd = flags.FLAGS.config.data\n"
           "print(json.dumps([d.held_out_clusters, flags.FLAGS.config.train.steps, d.template.style, "
           "dict(d.template.format_mix)]))")
  out = subprocess.run([sys.executable, "-c", parse, "--config=configs/tiny.py", *sweep.override_flags(overrides)],
                       cwd=ROOT, capture_output=True, text=True, check=True).stdout
  assert json.loads(out) == [["nli", "misc"], 5, "none", {"chat": 2.0, "flan": 1.0}]


def test_ablation_configs_define_their_sweeps_and_share_one_tokenizer():
  for name, size in (("held_out_clusters", 12), ("num_training_clusters", 5), ("templates_per_task", 4),
                     ("template_styles", 3)):
    config, entries = sweep.load_sweep(os.path.join(ROOT, "configs", "ablations", f"{name}.py"))
    assert len(entries) == size and config.train.steps > 0
    sweep.check_one_tokenizer(config, entries)
  config.data.tokenizer.held_out_clusters = None  # each run's own held-out clusters: tokenizers differ
  with pytest.raises(ValueError, match="would train different tokenizers"):
    sweep.check_one_tokenizer(config, [{"data.held_out_clusters": ("nli",)}, {"data.held_out_clusters": ("misc",)}])
  with pytest.raises(ValueError, match="defines no get_sweep"):
    sweep.load_sweep(os.path.join(ROOT, "configs", "tiny.py"))


@pytest.mark.slow
def test_a_sweep_runs_each_entry_once_and_the_report_gathers_them(tmp_path):
  config_path = tmp_path / "micro_sweep.py"
  config_path.write_text(MICRO_SWEEP)
  root = str(tmp_path / "runs")
  command = [sys.executable, "-m", "flan_jax.sweep", f"--config={config_path}", f"--workdir={root}"]
  env = {**os.environ, "PYTHONPATH": ROOT}
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(root)) == ["held_out_clusters=nli", "held_out_clusters=sentiment_steps=2"]
  assert os.path.isdir(os.path.join(root, "held_out_clusters=sentiment_steps=2", "checkpoints", "2"))
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert again.stdout.count("finished, skipped") == 2
  report = subprocess.run([sys.executable, "-m", "flan_jax.report", root], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
  assert report.returncode == 0, report.stderr[-3000:]
  table = open(os.path.join(root, "report.md")).read()
  assert "| held_out_clusters=nli | 3 | nli |" in table and "| held_out_clusters=sentiment_steps=2 | 2 | sentiment |" in table
  assert os.path.getsize(os.path.join(root, "held_out_by_cluster.png")) > 1000
  assert open(os.path.join(root, "report.csv")).readline().startswith("run,step,held_out_clusters")


def test_a_run_is_finished_when_its_final_checkpoint_and_evaluation_exist(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "5")
  assert sweep.finished(str(tmp_path), 5, evaluates=False)
  assert not sweep.finished(str(tmp_path), 5, evaluates=True)  # its evaluation died: not finished
  os.makedirs(tmp_path / "eval" / "5")
  (tmp_path / "eval" / "5" / "results.json").write_text("{}")
  assert sweep.finished(str(tmp_path), 5, evaluates=True) and not sweep.finished(str(tmp_path), 6, evaluates=False)
