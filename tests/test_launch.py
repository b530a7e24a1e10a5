"""Launch scripts (dry runs) and two local processes under JAX's multi-process runtime."""

import json
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ROOT, SMALL, copy_tokenizer, corrupt, free_port, losses

TRAIN = [sys.executable, "-m", "flan_jax.train", "--config=configs/tiny.py"]


def dry_run(*args, env=None):
  result = subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
  return [shlex.split(line) for line in result.stdout.splitlines()]


def test_local_multiprocess_dry_run_gives_each_process_its_id():
  lines = dry_run("launch/local_multiprocess.sh", "--dry_run", "3", "4", "python", "-m", "flan_jax.train",
                  "--config", "configs/tiny.py", env={"PORT": "4321"})
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert line[:2] == ["env", "XLA_FLAGS=--xla_force_host_platform_device_count=4"]
    assert line[2:7] == ["python", "-m", "flan_jax.train", "--config", "configs/tiny.py"]
    assert line[7:] == ["--config.distributed.coordinator_address=127.0.0.1:4321",
                        "--config.distributed.num_processes=3", f"--config.distributed.process_id={i}"]


def test_tpu_pod_dry_run_runs_the_command_on_every_worker():
  [line] = dry_run("launch/tpu_pod.sh", "--dry_run", "my-tpu", "us-central2-b", "python", "-m", "flan_jax.train",
                   "--config", "configs/flan2021.py:held_out=nli", env={"REPO_DIR": "/srv/flan jax"})
  assert line[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert line[6:9] == ["--zone", "us-central2-b", "--worker=all"]
  assert line[9] == "--command"
  remote = line[10]
  assert remote.startswith("cd /srv/flan jax && ") or remote.startswith("cd /srv/flan\\ jax && ")
  assert shlex.split(remote.split(" && ", 1)[1]) == ["python", "-m", "flan_jax.train", "--config",
                                                     "configs/flan2021.py:held_out=nli"]


@pytest.mark.slow
def test_gpu_check_dry_run_trains_with_each_attention_implementation_this_platform_runs():
  result = subprocess.run(["bash", "launch/gpu_check.sh", "--dry_run"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
  figures = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
  assert figures["attention_preset"] == "tiny"
  for implementation in ("einsum", "chunked", "xla"):
    assert float(figures[f"attention_{implementation}_tokens_per_s"]) > 0
    assert 0 < float(figures[f"attention_{implementation}_mfu"]) < 1
  assert not any("cudnn" in key or "splash" in key for key in figures)  # kernels only on their platforms


def test_slurm_dry_run_starts_one_task_per_node():
  [line] = dry_run("launch/slurm.sbatch", "python", "-m", "flan_jax.train", "--config", "configs/flan2021.py",
                   env={"DRY_RUN": "1"})
  assert line == ["srun", "--ntasks-per-node=1", "python", "-m", "flan_jax.train", "--config", "configs/flan2021.py"]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one_and_their_checkpoint_restores_in_one(tmp_path):
  # Evaluation at step 6 on a classification (rank scoring) and a generation (decoding) cluster.
  common = [*SMALL, "--config.optim.schedule=constant", "--config.evals.held_out.every_steps=6",
            "--config.data.held_out_clusters=('nli', 'translation')"]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  run = lambda cmd, env=None: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                                             env={**os.environ, **(env or {})})
  result = run([*TRAIN, f"--workdir={one}", *common, "--config.train.steps=8"])  # 8 simulated devices
  assert result.returncode == 0, result.stderr[-3000:]
  copy_tokenizer(one, two)
  result = run(["bash", "launch/local_multiprocess.sh", "2", "4", *TRAIN, f"--workdir={two}", *common,
                "--config.train.steps=6"], env={"PORT": str(free_port())})
  assert result.returncode == 0, result.stderr[-3000:]
  reference, two_processes = losses(one), losses(two)
  assert sorted(two_processes) == list(range(1, 7))
  # The same to float rounding: all-reduces over gloo sum in another order, and five steps at a learning rate
  # of 3e-3 grow that to ~1e-4.
  np.testing.assert_allclose([two_processes[s] for s in range(1, 7)], [reference[s] for s in range(1, 7)], rtol=1e-3)
  # The two processes' evaluation of their step-6 parameters is one process's evaluation of them.
  scores = lambda workdir, step: {name: task["mean"] for name, task in json.load(
      open(os.path.join(workdir, "eval", str(step), "results.json")))["tasks"].items()}
  alone = str(tmp_path / "alone")
  shutil.copytree(two, alone)
  result = run([sys.executable, "-m", "flan_jax.evaluate", "--config=configs/tiny.py", f"--workdir={alone}", "--step=6",
                *[flag for flag in common if flag.startswith(("--config.data", "--config.model", "--config.evals"))]])
  assert result.returncode == 0, result.stderr[-3000:]
  assert scores(alone, 6) == scores(two, 6) and set(scores(two, 6)) >= {"mini_nli_quantity", "mini_translate_en_es"}
  # One process takes over the two processes' checkpoint (step 6) and continues like the reference.
  result = run([*TRAIN, f"--workdir={two}", *common, "--config.train.steps=8"])
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = losses(two)
  np.testing.assert_allclose([resumed[7], resumed[8]], [reference[7], reference[8]], rtol=1e-3)
  assert scores(two, 8).keys() == scores(one, 8).keys()


def start_two_processes(workdir, *overrides):
  """Two processes of four devices each, on a hybrid mesh whose data axis spans them as two slices."""
  return subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", "4", *TRAIN, f"--workdir={workdir}", *SMALL,
                           "--config.mesh.dcn_data=2", *overrides], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PORT": str(free_port())})


def run_two_processes(workdir, *overrides):
  process = start_two_processes(workdir, *overrides)
  _, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]
  return stderr


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """12 uninterrupted steps on two processes (checkpoints at 4, 8 and 12), without evaluation."""
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  run_two_processes(workdir, "--config.evals.held_out.every_steps=-1", "--config.evals.seen.every_steps=-1")
  return workdir


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_one_step_on_both_and_the_rerun_is_bitwise_identical(
    two_process_run, tmp_path):
  workdir = str(tmp_path)
  copy_tokenizer(two_process_run, workdir)
  launcher = start_two_processes(workdir, "--config.evals.held_out.every_steps=-1", "--config.evals.seen.every_steps=-1")
  metrics = os.path.join(workdir, "metrics.jsonl")
  while launcher.poll() is None and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
    time.sleep(0.05)
  # Only process 1 is told; JAX's preemption service tells process 0, and they agree on a step a few
  # steps on (so the signal comes early: a run that ends first just finishes).
  assert launcher.poll() is None, launcher.communicate()[1][-3000:]
  found = subprocess.run(["pgrep", "-f", f"workdir={workdir} .*process_id=1"], capture_output=True, text=True)
  [pid] = found.stdout.split()
  os.kill(int(pid), signal.SIGTERM)
  _, stderr = launcher.communicate(timeout=300)
  assert launcher.returncode == 0, stderr[-3000:]
  saved = [int(step) for step in re.findall(r"preempted: saved step (\d+), exiting", stderr)]
  assert len(saved) == 2 and saved[0] == saved[1] < 12, stderr[-3000:]
  assert max(int(step) for step in os.listdir(os.path.join(workdir, "checkpoints"))) == saved[0]
  run_two_processes(workdir, "--config.evals.held_out.every_steps=-1", "--config.evals.seen.every_steps=-1")
  assert losses(workdir) == losses(two_process_run)  # every step, bit for bit


@pytest.mark.slow
def test_two_processes_fall_back_together_from_a_corrupt_checkpoint(two_process_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(two_process_run, workdir)
  corrupt(workdir, 12)
  stderr = run_two_processes(workdir, "--config.evals.held_out.every_steps=-1", "--config.evals.seen.every_steps=-1")
  assert stderr.count("resuming from step 8") == 2, stderr[-3000:]  # both processes, the same step
  assert losses(workdir) == losses(two_process_run)  # steps 9-12 trained again, identically
  assert os.listdir(os.path.join(workdir, "checkpoints_unreadable"))[0].startswith("12-")


@pytest.mark.slow
def test_two_processes_with_a_worker_each_train_on_prepared_shards_as_on_the_stream(two_process_run, tmp_path):
  directory = str(tmp_path / "prepared")
  copy_tokenizer(two_process_run, directory)
  result = subprocess.run([sys.executable, "-m", "flan_jax.data", "prepare", "--config=configs/tiny.py",
                           f"--out={directory}", *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = str(tmp_path / "run")
  stderr = run_two_processes(workdir, f"--config.data.prepared={directory}", "--config.data.num_workers=1",
                             "--config.evals.held_out.every_steps=-1", "--config.evals.seen.every_steps=-1",
                             "--verbosity=0")
  assert stderr.count("prepared examples") == 2 and "decontamination" not in stderr
  assert losses(workdir) == losses(two_process_run)  # every step, bit for bit
