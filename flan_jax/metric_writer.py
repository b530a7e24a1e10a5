"""Where training metrics go: `metrics.jsonl`, TensorBoard event files and a console line.

Only process 0 writes. On resume, `metrics.jsonl` is cut back to the restored
step, so the file always reads as one uninterrupted run.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import flags, logging


def quiet_absl_logging():
  """Warnings and errors only, unless the command line set --verbosity: Orbax and TensorFlow
  log every save and load at INFO."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def matmul_peak_flops(dtype=jnp.bfloat16, size: int = 2048, repeats: int = 3) -> float:
  """FLOP/s of a square matmul on one device (f32 accumulation): the denominator of MFU."""
  a = jnp.ones((size, size), dtype)
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(dot(a, a))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, a))
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


class Writer:
  """Appends one JSON object per logged step to `<workdir>/metrics.jsonl`, mirrors it to TensorBoard
  (`<workdir>/tensorboard`), and prints a progress line."""

  def __init__(self, workdir: str, total_steps: int, resumed_step: int):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.start_time, self.start_step = time.time(), resumed_step
    if not self.enabled:
      return
    _truncate_after(self.path, resumed_step)
    from flax.metrics import tensorboard  # imports TensorFlow: only on the writing process
    self.tensorboard = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": step, **metrics, "wall_time": time.time()}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in metrics.items():
      self.tensorboard.scalar(f"train/{key}", value, step)
    self.tensorboard.flush()
    elapsed = time.time() - self.start_time
    done = step - self.start_step
    eta = elapsed / done * (self.total_steps - step) if done else 0.0
    print(f"step {step}/{self.total_steps}  loss {metrics['loss']:.4f}  lr {metrics['learning_rate']:.2e}  "
          f"grad norm {metrics['grad_norm']:.3f}  {metrics['tokens_per_s']:,.0f} tokens/s  MFU {metrics['mfu']:.1%}  "
          f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)

  def write_eval(self, step: int, scores: dict):
    """Evaluation scores ({"eval/<cluster>": score, ...}) as their own record."""
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **scores, "wall_time": time.time()}) + "\n")
    for key, value in scores.items():
      self.tensorboard.scalar(key, value, step)
    self.tensorboard.flush()
    print(f"step {step} evaluation: " + "  ".join(f"{k.removeprefix('eval/')} {v:.1f}" for k, v in scores.items()),
          flush=True)

  def close(self):
    if self.enabled:
      self.tensorboard.close()


def _truncate_after(path: str, step: int):
  """Drops records of steps after `step`: ones logged by a run that died before its next checkpoint."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    records = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(records)
