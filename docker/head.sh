#!/bin/sh
# amc-head [AMC SERVE ARGS]: the phone farm's Ray head in the orchestrator's container, then `amc serve`
# on it (docker/compose.yaml's `head`). Ray must authenticate (docs/FARM.md): RAY_AUTH_MODE=token and
# RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH), or AMC_RAY_INSECURE=1 on a network you trust completely.
# AMC_RAY_PORT (6379), AMC_RAY_CPUS (1) and AMC_RAY_START_ARGS (more `ray start` flags) tune the head.
set -eu
if [ "${RAY_AUTH_MODE:-}" != token ] && [ "${AMC_RAY_INSECURE:-0}" != 1 ]; then
  echo "amc-head: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN are required (anyone reaching an unauthenticated" \
       "Ray cluster runs code on it); AMC_RAY_INSECURE=1 only on a network you trust completely" >&2
  exit 2
fi
port=${AMC_RAY_PORT:-6379}
# shellcheck disable=SC2086 # AMC_RAY_START_ARGS is a list of flags
env -u AMC_RAY_ADDRESS ray start --head --port "$port" --num-cpus "${AMC_RAY_CPUS:-1}" --include-dashboard false \
  --disable-usage-stats ${AMC_RAY_START_ARGS:-}
# The head's own raylet is the one in this container: amc serve joins the cluster through it.
export AMC_RAY_ADDRESS="${AMC_RAY_ADDRESS:-127.0.0.1:$port}"
exec amc serve "$@"
