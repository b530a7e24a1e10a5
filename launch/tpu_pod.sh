#!/usr/bin/env bash
# One flan_jax command on every worker of a TPU VM pod; JAX detects the pod and joins the processes.
#
#   launch/tpu_pod.sh [--dry_run] TPU_NAME ZONE python -m flan_jax.train --config configs/flan2021.py ...
#
# Assumes the repository is checked out at the same path (REPO_DIR, default ~/flan_jax) on every
# worker with requirements.txt installed, and a workdir every worker sees (--workdir gs://bucket/run:
# checkpoints, tokenizer and metrics are written there). With --dry_run, prints the gcloud command instead.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry_run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 3 ]]; then
  echo "usage: $0 [--dry_run] TPU_NAME ZONE COMMAND..." >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
remote="cd ${REPO_DIR:-~/flan_jax} && $(printf '%q ' "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
if ((dry_run)); then
  printf '%q ' "${cmd[@]}"; echo
else
  "${cmd[@]}"
fi
