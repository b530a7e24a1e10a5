"""What the device can do: its published peak, its measured matmul peaks, and the compute dtype to use.

MFU (model FLOPs utilisation) follows MaxText: model FLOPs per second over the device's
published dense bf16 peak (CHIPS). CPUs have no such figure, so on them MFU
is against the matmul peak measured on the machine in the dtype the model computes in; the
two are reported under different names (`mfu_vs_published_peak`, `mfu_vs_measured_peak`) so
that neither passes for the other.
"""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp

@dataclasses.dataclass(frozen=True)
class Chip:
  """An accelerator's published figures, per chip: dense bf16 TFLOP/s, HBM (GiB, GB/s), the
  inter-chip interconnect (ICI on TPUs, NVLink on GPUs: bidirectional GB/s per chip) and the
  data-centre network between slices or hosts (DCN: GB/s per chip), and where they come from."""
  peak_tflops: float
  hbm_gib: float | None = None
  hbm_gb_per_s: float | None = None
  ici_gb_per_s: float | None = None
  dcn_gb_per_s: float | None = None
  source: str = ""


_TPU_DOCS = "Cloud TPU system architecture pages (cloud.google.com/tpu/docs/<version>)"
# By jax's device_kind, matched exactly (a name contained in another, "L4" in "L40S", is another chip).
CHIPS = {
    "TPU v4": Chip(275, 32, 1200, 600, 6.25, _TPU_DOCS + "; ICI: 6 links x 50 GB/s (Jouppi et al. 2023); "
                   "DCN not published, taken as v5p's"),
    "TPU v5 lite": Chip(197, 16, 819, 400, 3.125, _TPU_DOCS + "; DCN: 2 x 100 Gb/s NICs per 8-chip host"),
    "TPU v5": Chip(459, 95, 2765, 1200, 6.25, _TPU_DOCS + "; DCN: 50 Gb/s per chip"),
    "TPU v6 lite": Chip(918, 32, 1638, 800, 3.125, _TPU_DOCS + "; DCN not published, taken as v5e's"),
    "NVIDIA H100 80GB HBM3": Chip(989, 80, 3350, 900, 50, "NVIDIA H100 SXM datasheet; DCN: one 400 Gb/s "
                                  "InfiniBand NIC per GPU"),
    "NVIDIA H100 PCIe": Chip(756, 80, 2000, source="NVIDIA H100 PCIe datasheet"),
    "NVIDIA H100 NVL": Chip(835, 94, 3900, source="NVIDIA H100 NVL datasheet"),
    "NVIDIA H200": Chip(989, 141, 4800, 900, 50, "NVIDIA H200 SXM datasheet; DCN: one 400 Gb/s InfiniBand "
                        "NIC per GPU"),
    "NVIDIA GH200 480GB": Chip(989, 96, 4000, 900, source="NVIDIA GH200 datasheet"),
    "NVIDIA B200": Chip(2250, 180, 8000, 1800, source="NVIDIA B200 datasheet"),
    "NVIDIA A100-SXM4-80GB": Chip(312, 80, 2039, 600, source="NVIDIA A100 datasheet"),
    "NVIDIA A100-SXM4-40GB": Chip(312, 40, 1555, 600, source="NVIDIA A100 datasheet"),
    "NVIDIA A100 80GB PCIe": Chip(312, 80, 1935, source="NVIDIA A100 datasheet"),
    "NVIDIA A100-PCIE-40GB": Chip(312, 40, 1555, source="NVIDIA A100 datasheet"),
    "NVIDIA L4": Chip(121, 24, 300, source="NVIDIA L4 datasheet"),
    "NVIDIA L40S": Chip(362, 48, 864, source="NVIDIA L40S datasheet"),
}

# CPUs with one of these flags multiply bf16 faster than f32 (others slower), by the unit's name.
BF16_CPU_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}


def published_peak_flops(device) -> float | None:
  """The published dense bf16 FLOP/s of one such device; None where there is none (CPUs, unknown kinds)."""
  chip = CHIPS.get(device.device_kind) if device.platform != "cpu" else None
  return chip.peak_tflops * 1e12 if chip else None


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


def compute_dtype(requested: str, platform: str | None = None) -> str:
  """`model.dtype`: "auto" is bfloat16 (f32 accumulation) where the device multiplies bf16 faster than
  f32 (TPUs, GPUs, CPUs with AMX or AVX512-BF16) and float32 elsewhere (AVX2-only CPUs run bf16 matmuls
  at about two thirds of f32's speed); anything else is kept, and checked. `platform`: the one compiled
  for (default: this process's devices')."""
  if requested == "auto":
    if (platform or jax.devices()[0].platform) != "cpu":
      return "bfloat16"
    return "bfloat16" if cpu_bf16_unit() else "float32"
  if requested not in ("bfloat16", "float32"):
    raise ValueError(f"model.dtype={requested!r}: choose auto, bfloat16 or float32")
  return requested


def cudnn_attention_unsupported(head_dim: int, device=None) -> str | None:
  """Why cuDNN's fused attention on packed rows cannot serve this GPU (default: the first device) and
  head size, or None where it can: it needs NVIDIA's CUDA (not ROCm) and compute capability 9.0
  (Hopper) or newer, whose kernels take packed rows and heads of up to 256."""
  device = device or jax.devices()[0]
  client = getattr(device, "client", None)
  runtime = f"{getattr(client, 'platform_name', '')} {getattr(client, 'platform_version', '')}".lower()
  if "rocm" in runtime:
    return "ROCm GPUs have no cuDNN"
  capability = float(getattr(device, "compute_capability", 0) or 0)
  if capability < 9.0:
    return f"compute capability {capability} is below 9.0 (Hopper), which packed rows need"
  if head_dim > 256:
    return f"head_dim {head_dim} is above 256"
  return None


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
