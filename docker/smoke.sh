#!/usr/bin/env bash
# Smoke-test the images `make images` builds, without a Docker engine (../shared/tools/oci/README.md):
# each container is a buildah working container run with chroot isolation on the host's network, in a
# PID namespace of its own (as under Docker: Ray's driver finds its node's raylet among the processes
# it sees, so two Ray nodes in one process table would confuse it).
#   1. orchestrator image: `amc-head` starts a Ray head (token authentication) and `amc serve` on a
#      loopback port; GET /healthz answers.
#   2. device-host image: `amc phone-sim` (an emulated phone) and `amc-device-host`, which joins the
#      head as a Ray node and serves the phone; `amc devices --ray` there lists it.
#   3. the orchestrator's GET /devices lists the phone too, with its device host.
# Every process it starts is ended by PID namespace (and session), every container removed.
# Usage: docker/smoke.sh [SERVER_IMAGE] [DEVICE_HOST_IMAGE]; AMC_SMOKE_TIMEOUT_S (default 300) per wait.
set -euo pipefail

server_image=${1:-localhost/amc-server:latest}
device_image=${2:-localhost/amc-device-host:latest}
timeout_s=${AMC_SMOKE_TIMEOUT_S:-300}
run_id=$$
work=$(mktemp -d /tmp/amc-smoke.XXXXXX)
containers=()
sessions=()
failed=""

say() { echo ">> smoke: $*"; }

tail_logs() {
  for log in "$work"/*.log; do
    [ -s "$log" ] || continue
    echo "---- last lines of $(basename "$log") ----"
    tail -n 25 "$log"
  done
}

fail() {
  failed=$1
  echo "!! smoke FAILED: $1" >&2
  tail_logs >&2
  exit 1
}

# Ends a container started by start_container: TERM to its process group, then SIGKILL to its PID
# namespace's first process (the kernel then kills every process left in that namespace).
end_session() {
  local sid=$1 init
  kill -TERM -- "-$sid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$sid" 2>/dev/null || return 0; sleep 0.5; done
  init=$(cat "/proc/$sid/task/$sid/children" 2>/dev/null || true)
  # shellcheck disable=SC2086 # a list of PIDs
  [ -z "$init" ] || kill -KILL $init 2>/dev/null || true
  kill -KILL -- "-$sid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$sid" 2>/dev/null || return 0; sleep 0.5; done
  echo "!! smoke: session $sid did not end" >&2
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ "${#sessions[@]}" = 0 ] && [ "${#containers[@]}" = 0 ] || say "cleaning up (containers and their processes)"
  touch "$work/stop" 2>/dev/null || true
  for sid in "${sessions[@]}"; do end_session "$sid"; done
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || echo "!! smoke: could not remove container $c" >&2; done
  rm -rf "$work"
  if [ "$rc" = 0 ] && [ -z "$failed" ]; then say "passed"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

# start_container NAME IMAGE [BUILDAH RUN OPTIONS...] -- COMMAND...: runs in the background, output in $work/NAME.log.
start_container() {
  local name=$1 image=$2 c
  shift 2
  local opts=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
  shift
  c=$(buildah from --pull=never --name "amc-smoke-$name-$run_id" "$image") || fail "buildah from $image"
  containers+=("$c")
  setsid unshare --pid --fork --mount-proc buildah run --isolation chroot "${opts[@]}" "$c" -- "$@" \
    >"$work/$name.log" 2>&1 </dev/null &
  sessions+=("$!")
}

alive() { kill -0 "$1" 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for WHAT SESSION COMMAND...: retries COMMAND until it succeeds (0), the container ends first (1),
# or the timeout (fails the smoke).
wait_for() {
  local what=$1 sid=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$sid" || { say "  the container ended before: $what"; return 1; }
    [ $((SECONDS - start)) -lt "$timeout_s" ] || fail "$what: not within ${timeout_s} s"
    sleep 2
  done
  say "  ok after $((SECONDS - start)) s: $what"
}

# Ray gives a node a fixed 30 s to start; on a machine busy at a higher priority it can take longer. Such a
# start is tried again, in a fresh container, up to $attempts times; any other exit fails the smoke.
attempts=${AMC_SMOKE_ATTEMPTS:-3}
retry_or_fail() {
  local what=$1 log=$2 attempt=$3 sid=$4
  if grep -q "timed out during startup" "$log" && [ "$attempt" -lt "$attempts" ]; then
    say "  Ray's node did not start within its 30 s (attempt $attempt of $attempts; the machine is busy): again"
    end_session "$sid"
    return 0
  fi
  fail "$what (the container exited; its log: $(basename "$log"))"
}

for image in "$server_image" "$device_image"; do
  buildah inspect --type image "$image" >/dev/null 2>&1 || fail "image $image not found (make images builds it)"
done

ray_token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
api_token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
ray_port=$(free_port)
http_port=$(free_port)
ray_env=(--env RAY_AUTH_MODE=token --env "RAY_AUTH_TOKEN=$ray_token"
         --env "AMC_RAY_START_ARGS=--object-store-memory 100000000")

say "1/3 orchestrator ($server_image): amc-head = Ray head on :$ray_port (token auth) + amc serve on 127.0.0.1:$http_port"
for attempt in $(seq 1 "$attempts"); do
  start_container "head-$attempt" "$server_image" "${ray_env[@]}" --env "AMC_RAY_PORT=$ray_port" \
    --env AMC_HOST=127.0.0.1 --env "AMC_PORT=$http_port" --env "AMC_API_TOKEN=$api_token" -- amc-head
  head_sid=${sessions[-1]}
  head_log=$work/head-$attempt.log
  wait_for "GET /healthz answers on 127.0.0.1:$http_port" "$head_sid" \
    curl -fsS --max-time 5 "http://127.0.0.1:$http_port/healthz" && break
  retry_or_fail "the orchestrator's amc-head" "$head_log" "$attempt" "$head_sid"
done
health=$(curl -fsS --max-time 5 "http://127.0.0.1:$http_port/healthz")
say "  /healthz: $health"
[[ $health == *'"status":"ok"'* ]] || fail "/healthz did not say status ok: $health"
# The address the head gives its nodes (`ray start --address='IP:PORT'` in its output).
head_address=$(sed -n "s/.*ray start --address='\([^']*\)'.*/\1/p" "$head_log" | head -n 1)
[ -n "$head_address" ] || fail "the Ray head printed no address to join"
say "  Ray head: $head_address"

say "2/3 device host ($device_image): amc phone-sim + amc-device-host joining $head_address"
cat >"$work/device.sh" <<'EOF'
# Runs inside the device-host image: an emulated phone, the device host serving it, then the listing.
set -u
mkdir -p /tmp/phone
amc phone-sim --port 0 --root /tmp/phone --serial SMOKE1 --model-name "Smoke Phone" --accept-new-keys \
  >/smoke/phone.log 2>&1 &
port=""
for _ in $(seq 1 240); do
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' /smoke/phone.log | head -n 1)
  [ -n "$port" ] && break
  sleep 0.5
done
[ -n "$port" ] || { echo "amc phone-sim did not start listening"; exit 3; }
echo "phone-sim listening on 127.0.0.1:$port"
amc-device-host --no-usb --device "adb:127.0.0.1:$port" --name smoke-host --scan-s 1 >/smoke/device-host.log 2>&1 &
host=$!
until [ -e /smoke/stop ]; do
  kill -0 "$host" 2>/dev/null || { echo "amc-device-host exited"; exit 4; }
  if [ ! -s /smoke/devices.json ] && amc devices --ray "$AMC_RAY_ADDRESS" --json >/tmp/devices.json 2>/smoke/devices.log \
     && grep -q SMOKE1 /tmp/devices.json; then
    cp /tmp/devices.json /smoke/devices.json
  fi
  sleep 2
done
EOF
for attempt in $(seq 1 "$attempts"); do
  start_container "device-$attempt" "$device_image" "${ray_env[@]}" --env "AMC_RAY_ADDRESS=$head_address" \
    -v "$work:/smoke" -- sh /smoke/device.sh
  device_sid=${sessions[-1]}
  wait_for "amc devices --ray (in the device host) lists the emulated phone" "$device_sid" \
    test -s "$work/devices.json" && break
  retry_or_fail "the device host" "$work/device-host.log" "$attempt" "$device_sid"
done
say "  $(python3 -c 'import json, sys
for d in json.load(open(sys.argv[1]))["devices"]:
    print(d["spec"], "host", d["host"], "model", repr(d["model"]), "health", d["health"])' "$work/devices.json")"

say "3/3 orchestrator: GET /devices lists the phone with its device host"
listed() {
  curl -fsS --max-time 60 -H "Authorization: Bearer $api_token" "http://127.0.0.1:$http_port/devices?refresh=true" \
    >"$work/api-devices.json" && grep -q '"host":"smoke-host"' "$work/api-devices.json"
}
wait_for "GET /devices lists a phone of smoke-host" "$head_sid" listed || fail "the orchestrator exited"
say "  $(python3 -c 'import json, sys
for d in json.load(open(sys.argv[1]))["devices"]:
    print(d["spec"], d["source"], d.get("host"), d["health"], end="; ")' "$work/api-devices.json")"
