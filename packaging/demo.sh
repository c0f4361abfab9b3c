#!/bin/bash
# The main job: a protected pair on this host with the embedded kvstore guest.
#
#   1. builds colod (installing what it needs),
#   2. starts colod-secondary and colod-primary (packaging/examples/demo.conf, both on 127.0.0.1),
#   3. waits until the guest is protected, has a client INCR a counter through the primary's
#      console (127.0.0.1:4555),
#   4. kills the primary (SIGKILL, as if its host died) and asks the secondary's console
#      (127.0.0.1:4556) for the counter: every acknowledged INCR is there,
#   5. leaves the secondary running the guest: talk to it with `nc 127.0.0.1 4556`; Ctrl-C stops.
#
# `packaging/demo.sh --standalone` runs the guest alone, unprotected, on 127.0.0.1:4555.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/packaging/install-deps.sh"
"$top/packaging/build.sh"
bin=$top/build/daemons
config=$top/packaging/examples/demo.conf
key=$top/packaging/examples/demo.key
if [ ! -f "$key" ]; then
  (umask 077 && head -c 32 /dev/urandom > "$key")
fi

if [ "${1:-}" = "--standalone" ]; then
  echo "demo: console on 127.0.0.1:4555 (nc 127.0.0.1 4555); Ctrl-C to stop" >&2
  exec "$bin/colod-primary" --config "$config" --standalone
fi

logs=$(mktemp -d /tmp/colod-demo.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
status() { "$bin/coloctl" --config "$config" --role "$1" status --json 2>/dev/null || true; }
wait_state() {  # role state
  for _ in $(seq 600); do
    status "$1" | grep -q "\"state\": \"$2\"" && return 0
    sleep 0.1
  done
  echo "demo: $1 never reached state $2; logs in $logs" >&2
  exit 1
}

say "Starting colod-secondary and colod-primary (logs in $logs)"
"$bin/colod-secondary" --config "$config" 2> "$logs/secondary.log" &
pids+=($!)
sleep 0.2
"$bin/colod-primary" --config "$config" 2> "$logs/primary.log" &
primary=$!
disown "$primary"  # its death below is the point of the demo, not news
pids+=($primary)
wait_state primary protected
"$bin/coloctl" --config "$config" --role primary status

say "A client INCRs a counter through the primary's console (127.0.0.1:4555)"
exec 3<>/dev/tcp/127.0.0.1/4555
acked=0
for i in $(seq 1 40); do
  echo "INCR counter" >&3
  read -r reply <&3
  acked=$reply
  [ $((i % 10)) -eq 0 ] && echo "  INCR counter -> $reply"
done
exec 3>&-
echo "  acknowledged INCRs: $acked"

say "Killing the primary (SIGKILL: as if its host died)"
kill -9 "$primary"
wait "$primary" 2>/dev/null || true
wait_state secondary active
grep -h 'failover-done' "$logs/secondary.log" | sed 's/^/  /' || true

say "The secondary's console (127.0.0.1:4556) answers with nothing lost"
exec 3<>/dev/tcp/127.0.0.1/4556
echo "GET counter" >&3
read -r value <&3
echo "  GET counter -> $value   (acknowledged before the kill: $acked)"
echo "INCR counter" >&3
read -r value <&3
echo "  INCR counter -> $value"
exec 3>&-
"$bin/coloctl" --config "$config" --role secondary status

if [ ! -t 0 ]; then
  say "No terminal to keep the demo open: stopping the secondary"
  exit 0
fi
say "The guest now runs on the secondary: nc 127.0.0.1 4556 to talk to it; Ctrl-C to stop"
wait "${pids[0]}"
