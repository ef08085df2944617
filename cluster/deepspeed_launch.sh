#!/usr/bin/env bash
# Launch CKF training with the `deepspeed` launcher (no Ray), on the nodes of a hostfile.
# The data, CF and LLM stages must exist in run.dir first (shared storage on every node):
#   ckf data prepare --config CONFIG && ckf cf train --config CONFIG
# Usage: cluster/deepspeed_launch.sh HOSTFILE CONFIG [key=value ...]
set -euo pipefail
hostfile=${1:?hostfile}; config=${2:?config}; shift 2
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-eth0}   # the interface the nodes reach each other on
# a bad hostfile line or a world size that does not fit the batch settings: one line, before any work
ckf cluster check-hostfile --hostfile "$hostfile" --config "$config" dist.launcher=deepspeed "$@"
exec deepspeed --hostfile "$hostfile" --module ckf_dist.train --config "$config" dist.launcher=deepspeed "$@"
