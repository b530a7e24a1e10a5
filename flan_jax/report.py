r"""Gathers a sweep's evaluation results into a table and figures.

  python -m flan_jax.report workdirs/held_out_clusters

Reads every `<run>/config.json` and the newest `<run>/eval/<step>/results.json` under the
directory and writes `report.md`, `report.csv`, `held_out_by_cluster.png` and, when the
runs train on different numbers of clusters, `held_out_vs_training_clusters.png`.
"""

import csv
import json

import matplotlib
import ml_collections
from absl import app
from etils import epath

from flan_jax.data import pipeline

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot as plt  # noqa: E402


def gather(sweep_dir: str) -> list[dict]:
  """One row per run with evaluation results: its held-out clusters, training clusters and scores."""
  rows = []
  for run in sorted(epath.Path(sweep_dir).iterdir()):
    eval_dir = run / "eval"
    if not (eval_dir.is_dir() and (run / "config.json").exists()):
      continue
    step = max(int(s.name) for s in eval_dir.iterdir())
    results = json.loads((eval_dir / str(step) / "results.json").read_text())
    data_config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text())["data"])
    training_clusters = sorted({t.cluster for t in pipeline.split_tasks(data_config)[0]})
    rows.append({
        "run": run.name, "step": step,
        "held_out_clusters": ",".join(data_config.held_out_clusters),
        "training_clusters": len(training_clusters),
        "held_out": results["held_out"], "seen": results.get("seen"),
        **{f"cluster/{c}": r["mean"] for c, r in sorted(results["clusters"].items())},
    })
  if not rows:
    raise FileNotFoundError(f"no runs with evaluation results under {sweep_dir}")
  return rows


def write_report(rows: list[dict], out_dir: str) -> list[str]:
  out_dir = epath.Path(out_dir)
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with (out_dir / "report.csv").open("w") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else ("" if v is None else str(v))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
  (out_dir / "report.md").write_text(f"# Sweep report: {out_dir.name}\n\n" + "\n".join(lines) + "\n")
  written = ["report.md", "report.csv"]

  fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(rows)), 3.5))
  ax.bar([r["held_out_clusters"] for r in rows], [r["held_out"] for r in rows])
  ax.set_ylabel("held-out score")
  ax.set_xlabel("held-out cluster")
  ax.tick_params(axis="x", rotation=45)
  fig.tight_layout()
  with (out_dir / "held_out_by_cluster.png").open("wb") as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)
  written.append("held_out_by_cluster.png")

  if len({r["training_clusters"] for r in rows}) > 1:
    points = sorted((r["training_clusters"], r["held_out"]) for r in rows)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(*zip(*points), marker="o")
    ax.set_xlabel("number of training clusters")
    ax.set_ylabel("held-out score")
    fig.tight_layout()
    with (out_dir / "held_out_vs_training_clusters.png").open("wb") as f:
      fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    written.append("held_out_vs_training_clusters.png")
  return written


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m flan_jax.report SWEEP_DIR")
  written = write_report(gather(argv[1]), argv[1])
  print((epath.Path(argv[1]) / "report.md").read_text())
  print("wrote " + ", ".join(str(epath.Path(argv[1]) / name) for name in written))


if __name__ == "__main__":
  app.run(main)
