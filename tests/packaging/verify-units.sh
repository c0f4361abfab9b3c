#!/bin/sh
# Checks the systemd units: `systemd-analyze verify` accepts both (no warning at all: verify
# only warns, with exit status 0, about unknown or misspelt settings), and the settings the
# pair's safety rests on are there (operator guide, "Restart policy").
#   verify-units.sh DIR
# DIR holds copies of the units whose ExecStart= names the built binaries (verify insists
# that the binary exists). Works without systemd as PID 1.
set -eu
dir=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# verify prints nothing and exits 0, or the file is not clean.
verify_clean() {
    if ! out=$(cd "$(dirname "$1")" && systemd-analyze verify --man=no "./$(basename "$1")" 2>&1); then
        fail "systemd-analyze verify $1 failed: $out"
    elif [ -n "$out" ]; then
        fail "systemd-analyze verify $1 warned: $out"
    fi
}

for unit in colod-primary@.service colod-secondary@.service; do
    [ -f "$dir/$unit" ] || { fail "$dir/$unit is missing"; continue; }
    verify_clean "$dir/$unit"
    # An instance, as systemctl starts it (colod-primary@demo.service).
    instance=$(echo "$unit" | sed 's/@\.service$/@demo.service/')
    cp "$dir/$unit" "$work/$unit"
    ln -sf "$unit" "$work/$instance"
    verify_clean "$work/$instance"
done

# The check can fail: a misspelt setting and a missing binary are both caught.
sed 's/^Restart=/Restrat=/' "$dir/colod-primary@.service" > "$work/typo@.service"
out=$(cd "$work" && systemd-analyze verify --man=no ./typo@.service 2>&1 || true)
echo "$out" | grep -q "Restrat" || fail "verify did not report a misspelt setting (got: $out)"
sed 's|^ExecStart=[^ ]*|ExecStart=/nonexistent/colod-primary|' "$dir/colod-primary@.service" > "$work/nobin@.service"
if (cd "$work" && systemd-analyze verify --man=no ./nobin@.service >/dev/null 2>&1); then
    fail "verify accepted a unit whose binary does not exist"
fi

# The settings the restart policy and /dev/kvm depend on.
has() { grep -Eq "^$2\$" "$dir/$1" || fail "$1 lacks a line matching '$2'"; }
lacks() { ! grep -Eq "^$2" "$dir/$1" || fail "$1 must not have '$2'"; }
for unit in colod-primary@.service colod-secondary@.service; do
    has "$unit" 'Type=notify'
    has "$unit" 'NotifyAccess=main'
    has "$unit" 'Restart=on-failure'
    has "$unit" 'WatchdogSec=[0-9]+s'
    has "$unit" 'DeviceAllow=/dev/kvm rw'
    has "$unit" 'ExecStart=[^ ]+ --config /etc/colod/%i\.conf'
    has "$unit" 'RuntimeDirectoryPreserve=yes'
    lacks "$unit" 'PrivateDevices=(yes|true|1|on)'
    lacks "$unit" 'Restart=(always|on-success|on-abnormal|on-abort)'
done
# A primary whose peer is active (exit 3) or whose config is bad (exit 2) is never retried.
has colod-primary@.service 'RestartPreventExitStatus=(2 3|3 2)'
has colod-secondary@.service 'RestartPreventExitStatus=2'
# The primary never starts at boot: a fresh guest after a failover is an operator's decision.
lacks colod-primary@.service '\[Install\]'
has colod-secondary@.service 'WantedBy=multi-user\.target'
# Never --standalone under the units: an unprotected guest is not a default.
lacks colod-primary@.service 'ExecStart=.*--standalone'

if [ "$failures" -ne 0 ]; then
    echo "$failures problem(s)" >&2
    exit 1
fi
echo "units verified: colod-primary@.service colod-secondary@.service"
