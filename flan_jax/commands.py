"""What the `python -m flan_jax.<command>` entry points do before their work."""

from absl import app, flags, logging


def quiet_absl_logging():
  """Warnings and errors only, unless the command line set --verbosity: Orbax and TensorFlow
  log every save and load at INFO."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def start(argv):
  """Refuses positional arguments (absl passes the program's name first) and quiets logging."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  quiet_absl_logging()
