#!/usr/bin/env bash
# The first figures from a GPU host, in under 10 minutes: the matmul peak, the train step of Llama-3.2-1B's
# shape with each attention implementation (einsum, chunked, xla, cudnn: tokens/s and MFU against the
# published peak) and KV-cache decoding; appended to BENCHMARKS.md as this device's section.
#
#   launch/gpu_check.sh [--dry_run]
#
# --dry_run runs the same sections on whatever devices are here with the tiny model's shape and writes
# nothing (on a CPU: cudnn is not tried).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--dry_run" ]]; then
  exec python -m flan_jax.bench --only peak,attention --attention_preset tiny
fi
python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" || {
  echo "gpu_check.sh: no GPU visible to JAX (install jax[cuda12] for this host; --dry_run runs on any device)" >&2
  exit 2
}
python -m flan_jax.bench --only peak,attention,decode --write
