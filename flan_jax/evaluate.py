r"""Runs a config's evaluators (config.evals) on a checkpoint of its run, as training runs them.

  python -m flan_jax.evaluate --config configs/tiny.py [--workdir DIR] [--step N] [--evals held_out,seen]

Each evaluator writes what it writes during training (zero_shot: DIR/eval/<step>/results.json,
results.md and answers/; see flan_jax/evaluators/). --evals picks some of them by name; the
default is every evaluator the run has switched on (all but every_steps=-1 without at_start).
"""

import jax
from absl import app, flags
from etils import epath

from flan_jax import checkpoint, commands, distributed, sharding, workdirs
from flan_jax.data import vocab
from flan_jax.evaluators import common
from flan_jax.model import from_config


def main(argv):
  commands.start(argv)
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir or workdirs.default(flags.FLAGS["config"].config_filename)
  distributed.initialize(config.distributed)  # a pod evaluates as it trains: every host, one mesh
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules(config.sharding_rules)
  sharding.resolve_batch_size(config, mesh)
  tokenizer = vocab.get_tokenizer(config.data, workdirs.tokenizer_dir(workdir))
  model = from_config(config.model)
  names = [name for name in (flags.FLAGS.evals or "").split(",") if name]
  with sharding.context(mesh, rules):
    target = sharding.param_shapes(model, mesh, rules)
    step, params = checkpoint.restore_run_params(workdir, config.train.init_from, target, step=flags.FLAGS.step)
    context = common.Context(config, model, tokenizer, mesh, workdir)
    for scheduled in common.from_config(config.evals, context, names):
      if names or scheduled.enabled:
        scheduled.evaluator.run(params, step)
  report = epath.Path(workdir) / "eval" / str(step) / "results.md"
  if jax.process_index() == 0 and report.exists():
    print(report.read_text())


if __name__ == "__main__":
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:arg].", lock_config=True)
  flags.DEFINE_string("workdir", None, "The run's workdir; default workdirs/<config name>[_<arg>].")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
  flags.DEFINE_string("evals", None, "Comma-separated names of config.evals entries to run (default: those switched on).")
  app.run(main)
