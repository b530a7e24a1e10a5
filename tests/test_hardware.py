import types

import jax
import pytest

from flan_jax import hardware
from flan_jax.model import ModelConfig


def _device(platform, kind):
  return types.SimpleNamespace(platform=platform, device_kind=kind)


@pytest.mark.parametrize("kind, tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                          ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L4", 121),
                                          ("NVIDIA L40S", 362), ("TPU v4", 275), ("TPU v5 lite", 197),
                                          ("TPU v5", 459), ("TPU v6 lite", 918)])
def test_published_peaks_are_found_by_exact_device_kind(kind, tflops):
  assert hardware.published_peak_flops(_device("gpu", kind)) == tflops * 1e12


@pytest.mark.parametrize("kind", ["NVIDIA L4 Future", "TPU v5 litepod", "NVIDIA H100 80GB HBM3e", "TPU v7"])
def test_a_kind_that_only_contains_a_known_name_has_no_published_peak(kind):
  assert hardware.published_peak_flops(_device("gpu", kind)) is None


def test_cpus_and_unknown_devices_have_no_published_peak_and_mfu_says_which_peak_it_used():
  assert hardware.published_peak_flops(_device("gpu", "Some Future GPU")) is None
  cpu = jax.devices("cpu")[0]
  assert hardware.published_peak_flops(cpu) is None
  measured = hardware.measured_peak_flops("float32")
  assert set(hardware.mfu(0.5 * measured, cpu, "float32")) == {"mfu_vs_measured_peak"}
  assert hardware.mfu(0.5 * measured, cpu, "float32")["mfu_vs_measured_peak"] == pytest.approx(0.5)
  h100 = hardware.mfu(494.5e12, _device("gpu", "NVIDIA H100 80GB HBM3"), "float32", num_devices=2)
  assert h100["mfu_vs_published_peak"] == pytest.approx(0.25)


@pytest.mark.parametrize("flags, expected", [("fpu avx2 fma", "float32"), ("avx2 amx_bf16 amx_tile", "bfloat16"),
                                             ("avx512f avx512_bf16", "bfloat16")])
def test_auto_compute_dtype_follows_the_cpus_bf16_support(monkeypatch, flags, expected):
  monkeypatch.setattr(hardware, "cpu_info", lambda: {"flags": flags})
  assert hardware.compute_dtype("auto") == expected
  cfg = ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, mlp_dim=8)
  assert cfg.dtype == expected
  assert hardware.compute_dtype("float32") == "float32" and hardware.compute_dtype("bfloat16") == "bfloat16"
  with pytest.raises(ValueError, match="model.dtype='fp8': choose auto, bfloat16 or float32"):
    hardware.compute_dtype("fp8")


@pytest.mark.parametrize("flags, unit", [("fpu avx2 amx_bf16 avx512_bf16", "AMX"),
                                         ("fpu avx2 avx512f avx512_bf16", "AVX512-BF16"),
                                         ("fpu avx2 fma", "no bf16 unit")])
def test_a_cpu_device_is_named_by_its_model_and_bf16_unit(monkeypatch, flags, unit):
  monkeypatch.setattr(hardware, "cpu_info", lambda: {"model name": "Some CPU", "flags": flags})
  assert hardware.device_name(jax.devices("cpu")[0]) == f"cpu (Some CPU, {unit})"


@pytest.mark.parametrize("runtime, capability, head_dim, reason", [
    ("cuda 12.8", "9.0", 128, None), ("cuda 12.8", "9.0", 256, None), ("cuda 12.8", "10.0", 64, None),
    ("cuda 12.8", "9.0", 512, "head_dim 512 is above 256"), ("cuda 12.8", "8.0", 128, "below 9.0 (Hopper)"),
    ("rocm 6.3", "9.4", 64, "ROCm")])
def test_cudnn_attention_is_ruled_out_where_cudnn_cannot_serve(runtime, capability, head_dim, reason):
  name, version = runtime.split()
  device = types.SimpleNamespace(platform="gpu", compute_capability=capability,
                                 client=types.SimpleNamespace(platform_name=name, platform_version=version))
  found = hardware.cudnn_attention_unsupported(head_dim, device)
  assert found is None if reason is None else reason in found


def test_auto_attention_on_a_gpu_cudnn_cannot_serve_falls_back_to_the_xla_path(monkeypatch):
  from flan_jax import model as model_lib
  cfg = ModelConfig(vocab_size=8, d_model=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32, mlp_dim=8,
                    dtype="bfloat16", platform="gpu")
  monkeypatch.setattr(hardware, "cudnn_attention_unsupported", lambda head_dim: None)
  assert model_lib.attention_implementation(cfg, 256) == "cudnn"
  monkeypatch.setattr(hardware, "cudnn_attention_unsupported", lambda head_dim: "compute capability 8.0 is below 9.0")
  assert model_lib.attention_implementation(cfg, 256) == "chunked"
  tpu = ModelConfig(**{**cfg.__dict__, "platform": "tpu"})
  assert model_lib.attention_implementation(tpu, 256) == "splash"
  assert model_lib.attention_implementation(tpu, 200) == "chunked"  # not a multiple of Splash's 128-token blocks
