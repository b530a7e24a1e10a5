r"""Runs (or launches) one training run per entry of a config's `get_sweep()`.

  python -m flan_jax.sweep --config configs/ablations/held_out_clusters.py [--workdir DIR]
      [--launcher local|tpu|slurm] [--tpu NAME --zone ZONE] [--dry_run]

Each entry is a dict of config overrides (and optionally "name", the run's
directory name); its run goes to `DIR/<name>` (DIR defaults to
workdirs/<config name>; the name defaults to one made from the overrides). A run whose final checkpoint
exists, and its final evaluation when it evaluates, is finished and skipped, so rerunning a sweep resumes it
(a run whose evaluation died is rerun: it resumes from its final checkpoint and evaluates). `local` runs the entries
one after another on this machine; `tpu` and `slurm` start each through
launch/tpu_pod.sh or `sbatch launch/slurm.sbatch` and return.
"""

import copy
import importlib.util
import re
import shlex
import subprocess
import sys

from absl import app, flags
from etils import epath

from flan_jax import workdirs
from flan_jax.data import vocab

LAUNCHERS = ("local", "tpu", "slurm")


def load_sweep(config_path: str):
  """(get_config(), get_sweep()) of a config file; the text after ':' is get_config's argument."""
  path, _, arg = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep()")
  return module.get_config(arg or None), module.get_sweep()


def run_name(overrides: dict) -> str:
  """{"data.held_out_clusters": ("nli",)} -> "held_out_clusters=nli"."""
  parts = []
  for key, value in overrides.items():
    text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    parts.append(f"{key.rsplit('.', 1)[-1]}={text}")
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", "_".join(parts))[:200]


def override_flags(overrides: dict) -> list[str]:
  """Overrides as config flags: tuples and dicts as Python literals, strings as they are (config_flags
  takes a string field's flag text literally)."""
  return [f"--config.{key}={value!r}" if isinstance(value, (tuple, list, dict)) else f"--config.{key}={value}"
          for key, value in overrides.items()]


def train_command(config_path: str, workdir: str, overrides: dict) -> list[str]:
  return [sys.executable, "-m", "flan_jax.train", f"--config={config_path}", f"--workdir={workdir}",
          *override_flags(overrides)]


def finished(workdir: str, steps: int, evaluates: bool) -> bool:
  done = (epath.Path(workdir) / "checkpoints" / str(steps)).is_dir()
  return done and (not evaluates or (epath.Path(workdir) / "eval" / str(steps) / "results.json").exists())


def launch_command(launcher: str, command: list[str], tpu: str, zone: str) -> list[str]:
  if launcher == "local":
    return command
  if launcher == "tpu":
    return ["bash", "launch/tpu_pod.sh", tpu, zone, "python", *command[1:]]
  return ["sbatch", "launch/slurm.sbatch", "python", *command[1:]]


def check_one_tokenizer(base, sweep: list[dict]):
  """Raises unless every run trains the same tokenizer (or all load one file): runs with different
  tokenizers differ in more than the swept setting."""
  specs = {}
  for entry in sweep:
    config = copy.deepcopy(base)
    config.update_from_flattened_dict({k: v for k, v in entry.items() if k != "name"})
    if not config.data.tokenizer.model:
      specs[entry.get("name") or run_name(entry)] = vocab.tokenizer_spec(config.data)
  (first, spec), *rest = specs.items() or [(None, None)]
  for other, other_spec in rest:
    if other_spec != spec:
      differ = {k: (spec[k], other_spec[k]) for k in spec if spec[k] != other_spec[k]}
      raise ValueError(f"runs {first} and {other} of this sweep would train different tokenizers (differing in "
                       f"{differ}); fix data.tokenizer.mixture and data.tokenizer.held_out_clusters in the config "
                       "so that they share one")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config_path = flags.FLAGS.config
  base, sweep = load_sweep(config_path)
  root = flags.FLAGS.workdir or workdirs.default(config_path)
  launcher = flags.FLAGS.launcher
  if launcher == "tpu" and not (flags.FLAGS.tpu and flags.FLAGS.zone):
    raise app.UsageError("--launcher=tpu needs --tpu and --zone")
  check_one_tokenizer(base, sweep)
  failed = []
  for entry in sweep:
    overrides = {k: v for k, v in entry.items() if k != "name"}
    workdir = str(epath.Path(root) / (entry.get("name") or run_name(overrides)))
    steps = overrides.get("train.steps", base.train.steps)
    evaluates = any(overrides.get(f"evals.{name}.every_steps", entry.every_steps) >= 0
                    for name, entry in base.evals.items())
    command = launch_command(launcher, train_command(config_path, workdir, overrides), flags.FLAGS.tpu,
                             flags.FLAGS.zone)
    if finished(workdir, steps, evaluates):
      print(f"[sweep] finished, skipped: {workdir}", flush=True)
      continue
    print(("[sweep] would run: " if flags.FLAGS.dry_run else "[sweep] running: ") + shlex.join(command), flush=True)
    if not flags.FLAGS.dry_run and subprocess.run(command).returncode:
      failed.append(workdir)
  if failed:
    raise SystemExit(f"{len(failed)} of {len(sweep)} runs failed: {', '.join(failed)}")
  if launcher == "local" and not flags.FLAGS.dry_run:
    print(f"[sweep] done; summarise with: python -m flan_jax.report {root}")


if __name__ == "__main__":
  flags.DEFINE_string("config", None, "A config file with get_sweep(), e.g. configs/ablations/held_out_clusters.py.",
                      required=True)
  flags.DEFINE_string("workdir", None, "Directory of the sweep's runs; default workdirs/<config name>.")
  flags.DEFINE_enum("launcher", "local", LAUNCHERS, "Where runs go.")
  flags.DEFINE_string("tpu", None, "TPU VM name (--launcher=tpu).")
  flags.DEFINE_string("zone", None, "TPU zone (--launcher=tpu).")
  flags.DEFINE_bool("dry_run", False, "Print the commands; run nothing.")
  app.run(main)
