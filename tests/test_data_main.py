import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from flan_jax.data import __main__ as data_main


def test_report_fields(tiny_config, tmp_path):
  tiny_config.data.seq_len = 256
  r = data_main.report(tiny_config, str(tmp_path), num_examples=500, num_batches=4)
  assert r["held_out_clusters"] == ["nli"] and r["excluded_clusters"] == ["nli", "paraphrase"]
  assert set(r["evaluation_tasks"].values()) == {"nli"}
  assert not {t["cluster"] for t in r["tasks"].values()} & {"nli", "paraphrase"}
  assert sum(t["count"] for t in r["tasks"].values()) == 500
  assert 0 < r["naive_packing_efficiency"] < r["packing_efficiency"] <= 1
  assert r["examples_per_s"] > 0 and r["tokens_per_s"] > 0


@pytest.mark.slow
def test_cli_json_and_show(tmp_path):
  out = subprocess.run([sys.executable, "-m", "flan_jax.data", "--config", "configs/tiny.py", "--workdir",
                        str(tmp_path), "--json", "--examples", "300", "--batches", "3", "--show", "2"],
                       cwd=ROOT, capture_output=True, text=True, check=True).stdout
  report = json.loads(out[:out.index("\n-----")])
  for key in ("packing_efficiency", "naive_packing_efficiency", "examples_per_s", "held_out_clusters", "tasks"):
    assert key in report
  assert out.count("----- example") == 2 and "</s>" in out
  bad = subprocess.run([sys.executable, "-m", "flan_jax.data", "--config", "configs/tiny.py",
                        "--config.data.no_such_key=1"], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode != 0 and "no_such_key" in bad.stderr
