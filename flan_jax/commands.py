"""What the `python -m flan_jax.<command>` entry points do before their work."""

import ctypes
import ctypes.util
import glob
import os

import jax
from absl import app, flags, logging

from flan_jax import distributed, inference

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def quiet_absl_logging():
  """Warnings and errors only, unless the command line set --verbosity: Orbax and TensorFlow
  log every save and load at INFO."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def keep_freed_host_memory() -> bool:
  """Has glibc's malloc keep the memory the process frees for reuse rather than give it back to the
  kernel, and single-device CPU programs run on the thread that calls them; True where malloc was set.
  Runs before JAX starts its backends and threads.

  XLA:CPU allocates each execution's temporary buffer anew (2.3 GB for the d512 train step) and frees
  it afterwards. By default glibc serves such a block with mmap, so every step page-faults the whole
  buffer in again: ~600k faults and 17% of the d512 step's time on a 2-core Xeon. Here large blocks come
  from the heap (M_MMAP_MAX 0), which is never trimmed (M_TRIM_THRESHOLD the largest size_t), so the
  freed buffer is the next step's, already mapped. That holds for the main thread's heap only: the
  other threads' arenas are capped at 64 MiB and map larger blocks anyway (one arena for all threads
  instead costs evaluation 9% in lock contention), hence inline dispatch, which runs (and allocates
  for) a program on the calling thread; multi-device programs keep their own threads. The price: the
  process keeps its peak host memory until it exits. malloc is left alone off glibc, where
  GLIBC_TUNABLES is set (the user's own settings; the benchmark runs its PyTorch peer under an empty
  one, as it would run without flan_jax), and where the process may run on an accelerator (its host
  memory holds the input pipeline, not the model's temporaries).
  """
  jax.config.update("jax_cpu_enable_async_dispatch", False)  # only CPU devices read it
  if "GLIBC_TUNABLES" in os.environ or not runs_on_cpu():
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.gnu_get_libc_version  # noqa: B018 (glibc's alone: musl's and macOS's libc lack it)
  except (OSError, AttributeError, TypeError):
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))


# Device files of accelerators JAX runs on: TPUs (accel, vfio), NVIDIA GPUs, AMD GPUs (kfd).
ACCELERATOR_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def runs_on_cpu() -> bool:
  """Whether this process computes on the CPU, told without starting JAX's backends (which must wait
  for jax.distributed): JAX_PLATFORMS names only cpu, or the machine has no accelerator's device
  files (a CPU host with libtpu installed for flan_jax.plan still computes on its CPU)."""
  if jax.config.jax_platforms:
    return set(jax.config.jax_platforms.split(",")) == {"cpu"}
  return not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICE_FILES)


def start(argv):
  """Refuses positional arguments (absl passes the program's name first), quiets logging and keeps
  freed host memory for reuse."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  quiet_absl_logging()
  keep_freed_host_memory()


def define_model_flags(role: str):
  """--workdir, --checkpoint and --step: the model a command loads with load_model."""
  flags.DEFINE_string("workdir", None, f"A training run's workdir: {role}.")
  flags.DEFINE_string("checkpoint", None, f"A checkpoint written by flan_jax.convert import: {role}.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")


def load_model() -> inference.LoadedModel:
  """The model --workdir or --checkpoint names (define_model_flags), at --step, split over the
  devices of every process of the cluster JAX detects (distributed.initialize): every process then
  computes the same answers, and process 0 alone writes them."""
  flag = flags.FLAGS
  if bool(flag.workdir) == bool(flag.checkpoint):
    raise app.UsageError("give one of --workdir (a training run) or --checkpoint (an imported model)")
  distributed.initialize()
  return inference.load(workdir=flag.workdir, checkpoint_dir=flag.checkpoint, step=flag.step)
