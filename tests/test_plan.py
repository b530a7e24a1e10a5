"""Ahead-of-time compilation for TPU: lowering without libtpu (jax.export), and `plan` with it."""

import importlib.util
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from flan_jax import plan, sharding
from flan_jax.model import from_config
from tests.helpers import ROOT, load_config

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason=f"compiling for TPU topologies needs {plan.LIBTPU} (.ci/run installs it)")


def _tpu_config():
  config = load_config("tiny")
  config.model.platform, config.model.dtype = "tpu", "bfloat16"
  return config


@pytest.mark.parametrize("slices, scan_layers", [(1, True), (2, False)])
def test_train_scoring_and_decoding_lower_for_tpu_with_splash_attention_on_a_mesh(slices,
                                                                                 scan_layers):
  """The default config (attention auto) lowered for TPU on 8 devices, as one slice or as two whose
  `data` axis spans them: auto picks Splash, and its Pallas kernel sits inside shard_map (XLA cannot
  partition a Mosaic kernel: under plain jit on a mesh this lowering fails). With scanned layers the
  KV cache's rows, behind its layers axis, are what is split."""
  config = _tpu_config()
  config.model.scan_layers = scan_layers
  devices = np.array(jax.devices()[:8])
  shape = (2, 4, 1) if slices == 2 else (1, 8, 1)
  mesh = Mesh(devices.reshape(shape), sharding.MESH_AXES)
  config.mesh.data, config.mesh.fsdp = mesh.shape["data"], mesh.shape["fsdp"]
  rules = sharding.rules(config.sharding_rules)
  sharding.resolve_batch_size(config, mesh)
  model = from_config(config.model)
  with sharding.context(mesh, rules):
    programs = plan.programs(config, model, mesh, rules)
    assert programs["train"][3]["attention"] == "splash"
    for name, (jitted, args, static, _) in programs.items():
      exported = jax.export.export(jitted, platforms=["tpu"])(*args, **static)
      assert exported.platforms == ("tpu",)
      # Scoring attends by its mask (shared prompts), decoding over its cache: no kernel.
      assert ("tpu_custom_call" in exported.mlir_module()) == (name == "train")


@needs_libtpu
def test_plan_compiles_the_tiny_config_for_a_v5e_slice_and_counts_its_flops():
  report = plan.plan(load_config("tiny"), "v5litepod-4")
  assert report["chips"] == 4 and report["device_kind"] == "TPU v5 lite"
  assert report["mesh"]["data"] == 4
  train = report["train"]
  assert train["attention"] == "splash" and train["fits"]
  assert train["custom_kernels_per_step"] == 3 * 4  # forward, dq and dkv kernels in 4 layers
  # Every layer and loss chunk counted (XLA's cost_analysis counts the loss's scan body once).
  assert train["flops_per_step"] == pytest.approx(train["model_flops_per_step"], rel=0.1)
  assert train["xla_cost_analysis_flops"] < 0.8 * train["model_flops_per_step"]
  # Pure data parallelism: the gradients' all-reduce is the only collective, none over DCN.
  assert set(train["collectives"]) == {"all-reduce"}
  assert train["collectives"]["all-reduce"]["dcn"] == 0
  assert 0 < train["mfu"] <= 1 and train["estimated_step_s"] == max(train["roofline"].values())
  assert report["score"]["attention"] == "chunked" and report["decode"]["fits"]


@needs_libtpu
def test_plan_over_two_slices_sends_only_gradient_all_reduces_over_dcn():
  report = plan.plan(load_config("tiny"), "v5litepod-4", num_slices=2)
  assert report["chips"] == 8 and report["mesh"]["data"] == 8
  dcn = {kind: c for kind, c in report["train"]["collectives"].items() if c["dcn"]}
  assert set(dcn) == {"all-reduce"}
  assert report["train"]["roofline"]["dcn_s"] > 0


@needs_libtpu
def test_the_readme_pod_command_passes_the_start_up_checks_on_a_v5p_64(tmp_path):
  """configs/flan2021.py on an imported Llama-3-8B (its model.json only: shapes), 32 chips: the
  batch follows the chips, every parameter divides over fsdp; an eval batch that cannot divide is
  an error naming its key."""
  from flan_jax import presets
  fields = {k: v for k, v in presets.get("llama3_8b").items() if k not in ("lora_targets",)}
  info = {"model": fields, "family": "llama", "chat_format": "llama3"}
  (tmp_path / "model.json").write_text(json.dumps(info))
  config = load_config("flan2021", f"checkpoint={tmp_path},held_out=nli")
  mesh, model = plan.startup_checks(config, "v5p-64")
  assert mesh.shape["fsdp"] == 32 and config.data.batch_size == 32 and model.cfg.dtype == "bfloat16"
  config = load_config("flan2021", f"checkpoint={tmp_path},held_out=nli")
  config.evals.held_out.batch_size = 48
  with pytest.raises(ValueError, match="evals.held_out.batch_size=48 must be a multiple of the 32"):
    plan.startup_checks(config, "v5p-64")


def test_unknown_topologies_and_a_missing_libtpu_are_one_line_errors(monkeypatch):
  with pytest.raises(ValueError, match="unknown topology 'v5p-63': give a Cloud TPU type such as"):
    plan.topology_devices("v5p-63")
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ValueError, match=r"needs libtpu on this host: pip install libtpu==0.0.42.1"):
    plan.topology_devices("v5p-64")


@needs_libtpu
@pytest.mark.slow
def test_plan_command_prints_one_json_object_with_a_program_each():
  def run(*args):
    command = [sys.executable, "-m", "flan_jax.plan", "--config", "configs/tiny.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  report = json.loads(run("--topology", "v5litepod-4", "--json").stdout)
  assert {"topology", "chips", "device_kind"} <= set(report)
  keys = {"attention", "bytes_per_chip", "hbm_bytes_per_chip", "fits", "flops_per_step",
          "model_flops_per_step", "estimated_step_s", "tokens_per_s_per_chip", "mfu", "collectives"}
  for name in ("train", "score", "decode"):
    assert keys <= set(report[name])
  bad = run("--topology", "v9-8")
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1].startswith("plan: unknown topology 'v9-8'")
