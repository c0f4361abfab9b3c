#!/bin/sh
# The main job: builds colod and runs the embedded kvstore guest with its console on
# 127.0.0.1:4555. Talk to it from another terminal:   nc 127.0.0.1 4555   (then PING, SET k v,
# GET k, INCR n, INFO). Ctrl-C stops it.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/packaging/install-deps.sh"
"$top/packaging/build.sh"
config="$top/packaging/examples/demo.conf"
key="$top/packaging/examples/demo.key"
if [ ! -f "$key" ]; then
  umask 077
  head -c 32 /dev/urandom > "$key"
fi
echo "demo: console on 127.0.0.1:4555 (nc 127.0.0.1 4555); Ctrl-C to stop" >&2
exec "$top/build/daemons/colod-primary" --config "$config" --standalone
