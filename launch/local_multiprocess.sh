#!/usr/bin/env bash
# N processes of one flan_jax command on this machine, joined by JAX's multi-process runtime.
#
#   launch/local_multiprocess.sh [--dry_run] N DEVICES_PER_PROCESS python -m flan_jax.train --config configs/tiny.py ...
#
# Process i gets --config.distributed.{coordinator_address,num_processes,process_id}; on CPU each
# simulates DEVICES_PER_PROCESS devices. PORT (default 12355) is the coordinator's port on 127.0.0.1.
# With --dry_run, prints the commands instead of running them.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry_run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 3 ]]; then
  echo "usage: $0 [--dry_run] N DEVICES_PER_PROCESS COMMAND..." >&2
  exit 2
fi
n=$1 devices=$2
shift 2
port=${PORT:-12355}
pids=()
for ((i = 0; i < n; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$devices" "$@"
       "--config.distributed.coordinator_address=127.0.0.1:$port"
       "--config.distributed.num_processes=$n" "--config.distributed.process_id=$i")
  if ((dry_run)); then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
