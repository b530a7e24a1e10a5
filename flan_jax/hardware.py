"""What the device can do: its published peak, its measured matmul peaks, and the compute dtype to use.

MFU (model FLOPs utilisation) follows MaxText: model FLOPs per second over the device's
published dense bf16 peak (PUBLISHED_PEAK_TFLOPS). CPUs have no such figure, so on them MFU
is against the matmul peak measured on the machine in the dtype the model computes in; the
two are reported under different names (`mfu_vs_published_peak`, `mfu_vs_measured_peak`) so
that neither passes for the other.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp

# Dense bf16 TFLOP/s per chip as the vendors publish them, by a substring of jax's device_kind.
# Longer keys are matched first ("TPU v5 lite" before "TPU v5").
PUBLISHED_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}

# CPUs with one of these flags multiply bf16 faster than f32 (others slower), by the unit's name.
BF16_CPU_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}


def published_peak_flops(device) -> float | None:
  """The published dense bf16 FLOP/s of one such device; None where there is none (CPUs, unknown kinds)."""
  if device.platform == "cpu":
    return None
  for key in sorted(PUBLISHED_PEAK_TFLOPS, key=len, reverse=True):
    if key.lower() in device.device_kind.lower():
      return PUBLISHED_PEAK_TFLOPS[key] * 1e12
  return None


def cpu_info() -> dict[str, str]:
  """The first processor's /proc/cpuinfo fields ({} where there is none)."""
  info = {}
  if os.path.exists("/proc/cpuinfo"):
    for line in open("/proc/cpuinfo").read().splitlines():
      key, _, value = line.partition(":")
      info.setdefault(key.strip(), value.strip())
  return info


def cpu_bf16_unit() -> str | None:
  """The name of this CPU's bf16 matmul unit (BF16_CPU_FLAGS), None where it has none."""
  flags = cpu_info().get("flags", "").split()
  return next((name for flag, name in BF16_CPU_FLAGS.items() if flag in flags), None)


def device_name(device) -> str:
  """The accelerator's kind; for the CPU, its model and its bf16 unit (AMX, AVX512-BF16 or none: bf16
  matmuls several times faster than f32 with one, slower without), since CPU figures mean nothing
  without them."""
  if device.platform != "cpu" or not cpu_info():
    return device.device_kind
  return f"cpu ({cpu_info().get('model name', 'unknown model')}, {cpu_bf16_unit() or 'no bf16 unit'})"


def compute_dtype(requested: str) -> str:
  """`model.dtype`: "auto" is bfloat16 (f32 accumulation) where the device multiplies bf16 faster than
  f32 (TPUs, GPUs, CPUs with AMX or AVX512-BF16) and float32 elsewhere (AVX2-only CPUs run bf16 matmuls
  at about two thirds of f32's speed); anything else is kept, and checked."""
  if requested == "auto":
    if jax.devices()[0].platform != "cpu":
      return "bfloat16"
    return "bfloat16" if cpu_bf16_unit() else "float32"
  if requested not in ("bfloat16", "float32"):
    raise ValueError(f"model.dtype={requested!r}: choose auto, bfloat16 or float32")
  return requested


def measured_peak_flops(dtype: str, sizes=(2048,), repeats: int = 3) -> float:
  """The best FLOP/s of square matmuls (operands in `dtype`, f32 accumulation) on the default device."""
  return max(_matmul_flops(jnp.dtype(dtype), n, repeats) for n in sizes)


@functools.cache
def _matmul_flops(dtype, size: int, repeats: int) -> float:
  a = jnp.ones((size, size), dtype)
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(dot(a, a))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, a))
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def mfu(model_flops_per_s: float, device, dtype: str, num_devices: int = 1) -> dict:
  """{"mfu_vs_published_peak": ...} where the device kind has a published peak, and always
  {"mfu_vs_measured_peak": ...} against the measured matmul peak in `dtype`, both over num_devices."""
  out = {}
  published = published_peak_flops(device)
  if published:
    out["mfu_vs_published_peak"] = model_flops_per_s / (published * num_devices)
  out["mfu_vs_measured_peak"] = model_flops_per_s / (measured_peak_flops(dtype) * num_devices)
  return out
