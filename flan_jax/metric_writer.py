"""Where training metrics go: `metrics.jsonl`, TensorBoard event files and a console line.

Only process 0 writes. On resume, `metrics.jsonl` is cut back to the restored
step, so the file always reads as one uninterrupted run. Every file goes through
`etils.epath` and is rewritten whole at each record (object stores such as gs://
cannot append; a rewritten object is visible at once). Records come only at log
and evaluation steps, so the files stay small. TensorBoard reads the event file
(`tensorboard/events.out.tfevents.<time>.<host>.<id>`, one per start of the run).
"""

import io
import json
import socket
import time
import uuid

import jax
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class EventFile:
  """A TensorBoard event file of scalars, rewritten whole through epath after each step's records."""

  def __init__(self, directory: epath.Path):
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    self.path = directory / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"
    self.buffer = io.BytesIO()
    self.records = RecordWriter(self.buffer)
    self.records.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())

  def scalars(self, step: int, values: dict):
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                                         for tag, value in values.items()])
    self.records.write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary).SerializeToString())
    self.path.write_bytes(self.buffer.getvalue())


class Writer:
  """Appends one JSON object per logged step to `<workdir>/metrics.jsonl`, mirrors it to TensorBoard
  (`<workdir>/tensorboard`), and prints a progress line."""

  def __init__(self, workdir: str, total_steps: int, resumed_step: int):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.start_time, self.start_step = time.time(), resumed_step
    if not self.enabled:
      return
    self.lines = _lines_until(self.path, resumed_step)
    self.path.write_text("".join(self.lines))
    self.tensorboard = EventFile(epath.Path(workdir) / "tensorboard")

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    self._append({"step": step, **metrics, "wall_time": time.time()})
    self.tensorboard.scalars(step, {f"train/{key}": value for key, value in metrics.items()})
    elapsed = time.time() - self.start_time
    done = step - self.start_step
    eta = elapsed / done * (self.total_steps - step) if done else 0.0
    preference = (f"reward accuracy {metrics['rewards/accuracy']:.3f}  margin {metrics['rewards/margin']:.3f}  "
                  if "rewards/accuracy" in metrics else "")
    print(f"step {step}/{self.total_steps}  loss {metrics['loss']:.4f}  {preference}"
          f"lr {metrics['learning_rate']:.2e}  "
          f"grad norm {metrics['grad_norm']:.3f}  {metrics['tokens_per_s']:,.0f} tokens/s  {_mfu(metrics)}  "
          f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)

  def write_eval(self, step: int, scores: dict):
    """Evaluation scores ({"eval/<cluster>": score, ...}) as their own record."""
    if not self.enabled:
      return
    self._append({"step": step, **scores, "wall_time": time.time()})
    self.tensorboard.scalars(step, scores)
    print(f"step {step} evaluation: " + "  ".join(f"{k.removeprefix('eval/')} {v:.1f}" for k, v in scores.items()),
          flush=True)

  def _append(self, record: dict):
    self.lines.append(json.dumps(record) + "\n")
    self.path.write_text("".join(self.lines))


def _mfu(metrics: dict) -> str:
  if "mfu_vs_published_peak" in metrics:
    return f"MFU {metrics['mfu_vs_published_peak']:.1%} of the published peak"
  return f"MFU {metrics['mfu_vs_measured_peak']:.1%} of the measured matmul peak"


def _lines_until(path: epath.Path, step: int) -> list[str]:
  """The records of steps up to `step`: later ones were logged by a run that died before its next checkpoint."""
  if not path.exists():
    return []
  return [line + "\n" for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
