#!/usr/bin/env bash
# Submit CKF training to a running Ray cluster with `ray job submit`.
# Usage: RAY_ADDRESS=http://HEAD:8265 cluster/ray_job_submit.sh CONFIG [key=value ...]
# The working directory is shipped as the job's runtime_env; the cluster's Python must have
# ckf_dist's dependencies (see cluster/ray-cluster.yaml for a node setup).
set -euo pipefail
config=${1:?config}; shift
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
export RAY_ADDRESS
exec ray job submit --working-dir . \
  --runtime-env-json '{"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}' \
  -- python -m ckf_dist.cli train --config "$config" dist.launcher=ray "$@"
