#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# ocf-tester (Debian's resource-agents) on the OCF resource agent packaging/ocf/colod, against
# real daemons. ocf-tester runs every action itself on one instance: validate-all, monitor and
# probe of the stopped resource, start, promote and demote (three times), stop, starting a
# started and stopping a stopped resource. The instance is the [primary] host's of a one-host
# pair (the one that can start the guest from nothing); the [secondary] host's instance runs
# beside it through the whole test, as on a real pair, so the promoted primary protects its
# guest and each demote stops a guest that has a replica.
#
#   tests/packaging/ocf-tester-test.sh BIN_DIR AGENT [own-helpers]
#
# With own-helpers the agent does not find resource-agents' ocf-shellfuncs and uses its own.
# Exits 77, "skipped", without ocf-tester (apt-get install resource-agents).
set -u
if [ $# -lt 2 ] || [ $# -gt 3 ] || { [ $# = 3 ] && [ "$3" != own-helpers ]; }; then
    echo "usage: $0 BIN_DIR AGENT [own-helpers]" >&2
    exit 2
fi
own_helpers=${3:-}
if ! command -v ocf-tester >/dev/null 2>&1; then
    echo "ocf-test: skipped: ocf-tester is not installed (resource-agents; packaging/install-deps.sh)"
    exit 77
fi
BIN_DIR=$(cd "$1" && pwd)
AGENT=$2
. "$(dirname "$0")/ocf-pair.sh"

# ocf-tester checks, as root, that the user nobody can run the agent's meta-data: a copy in a
# directory nobody may enter (the test's own directory stays closed to others but for that).
chmod 711 "$work"
mkdir -p "$work/agent"
chmod 755 "$work/agent"
cp "$AGENT" "$work/agent/colod"
chmod 755 "$work/agent/colod"
AGENT=$work/agent/colod
if [ -n "$own_helpers" ]; then
    mkdir -p "$work/no-shellfuncs"
    export OCF_FUNCTIONS_DIR="$work/no-shellfuncs"
    say "the agent runs on its own helpers (no ocf-shellfuncs in $OCF_FUNCTIONS_DIR)"
fi

expect 0 colod-s start
ocf-tester -n colod-p -o config="$work/pair.conf" -o role=primary -o coloctl="$BIN_DIR/coloctl" \
    -o daemon_dir="$BIN_DIR" -o logfile="$work/colod-p.log" "$AGENT" >"$work/ocf-tester.out" 2>&1
status=$?
sed 's/^/  /' "$work/ocf-tester.out"
[ "$status" = 0 ] || fail "ocf-tester exited $status"
grep -q "passed all tests" "$work/ocf-tester.out" || fail "ocf-tester did not say it passed"
expect 7 colod-p monitor
expect 0 colod-s stop
expect 7 colod-s monitor
say "PASS"
