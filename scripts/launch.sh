#!/usr/bin/env bash
# Starts N local processes of one dmc run with torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
# MASTER_PORT), the way torchrun, srun or mpirun wrappers would; a failing rank stops the others.
#   scripts/launch.sh N CONFIG [key=value ...]        CONFIG: a YAML file, or - for none
#   DMC_COMMAND=retrofit scripts/launch.sh 4 configs/tiny/dmc-2-retrofit.yaml tensor_parallel=2
# Environment: DMC_BIN (default build/dmc), DMC_COMMAND (default train), MASTER_ADDR, MASTER_PORT.
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: scripts/launch.sh N CONFIG [key=value ...]" >&2; exit 2; }
n=$1 config=$2
shift 2
bin=${DMC_BIN:-$(dirname "$0")/../${DMC_BUILD:-build}/dmc}
cmd=${DMC_COMMAND:-train}
port=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
args=()
[ "$config" != "-" ] && args+=(--config "$config")
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r LOCAL_RANK=$r WORLD_SIZE=$n MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=$port \
    "$bin" "$cmd" "${args[@]}" "$@" &
  pids+=($!)
done
rc=0
for ((i = 0; i < n; i++)); do
  if ! wait -n; then
    rc=1
    kill "${pids[@]}" 2>/dev/null
  fi
done
exit $rc
