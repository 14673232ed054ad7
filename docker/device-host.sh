#!/bin/sh
# amc-device-host [AMC DEVICE-HOST ARGS]: join the phone farm's Ray cluster at AMC_RAY_ADDRESS (HEAD:PORT)
# as a node of this machine, then serve this machine's phones on it (`amc device-host`, docs/FARM.md).
# Ray must authenticate: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH), or
# AMC_RAY_INSECURE=1 (passed on as --insecure-ray-network) on a network you trust completely.
# AMC_RAY_CPUS (1) and AMC_RAY_START_ARGS (more `ray start` flags) tune the node.
set -eu
address=${AMC_RAY_ADDRESS:-}
if [ -z "$address" ]; then
  echo "amc-device-host: set AMC_RAY_ADDRESS to the farm's Ray head (HOST:PORT, e.g. head:6379)" >&2
  exit 2
fi
insecure=""
if [ "${RAY_AUTH_MODE:-}" != token ]; then
  if [ "${AMC_RAY_INSECURE:-0}" != 1 ]; then
    echo "amc-device-host: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN are required (anyone reaching an" \
         "unauthenticated Ray cluster runs code on it); AMC_RAY_INSECURE=1 only on a network you trust" >&2
    exit 2
  fi
  insecure=--insecure-ray-network
fi
# Not in Ray's processes, which need nothing from it (phone actors open their phones directly).
unset AMC_RAY_ADDRESS
# shellcheck disable=SC2086 # AMC_RAY_START_ARGS is a list of flags
ray start --address "$address" --num-cpus "${AMC_RAY_CPUS:-1}" ${AMC_RAY_START_ARGS:-}
exec amc device-host --address "$address" $insecure "$@"
