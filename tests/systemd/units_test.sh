#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# The units under a real systemd as PID 1: what the comments of colod-primary@.service and
# colod-secondary@.service promise, checked on an installed package with a real /dev/kvm.
#
#   tests/systemd/units_test.sh [--build-dir DIR] [--work-dir DIR] [--mirror URL] [--keep-root]
#                               [--skip-unless-enabled]
#
# How. The .deb is built with CPack from its own build tree (--build-dir, default
# build-systemd; no tests: only what the package holds) and installed with dpkg into a copy of a
# Debian bookworm root that has systemd and systemd-sysv (debootstrap, made once and kept in the
# work folder: --work-dir, default BUILD/units-test). That copy is booted with systemd as PID 1
# by `systemd-nspawn -b` with /dev/kvm bound in, inside the nested KVM host that
# tests/hostkvm/nested.sh boots (Debian's kernel under QEMU's TCG loads kvm_amd: this machine
# has no /dev/kvm). One config, /etc/colod/demo.conf, puts both daemons of the pair on loopback
# inside that one systemd, with `accelerator = kvm` and the embedded guest (builtin:kvstore).
# The test (run inside the nested host, entering the container with nsenter) checks:
#   1. Type=notify: `systemctl start` of each unit returns once the daemon is ready, the unit
#      turns active no earlier than the daemon's `started` record, and at that moment the
#      secondary listens and the primary's guest answers; StatusText (STATUS=) says standby,
#      then protected, and the secondary's names the checkpoints it applied.
#   2. The sandbox leaves /dev/kvm usable: the primary's guest runs on the kvm backend, the
#      daemon holds /dev/kvm and a KVM VM, under a read-only root, no new privileges, a seccomp
#      filter and no capability but CAP_NET_BIND_SERVICE; and DevicePolicy=closed is enforced
#      by this systemd (a transient service without DeviceAllow=/dev/kvm cannot open it).
#   3. WatchdogSec: the primary is frozen with SIGSTOP; the secondary fences (a fence command
#      that succeeds) and takes over (the key set through the primary's console before is
#      there on the secondary's); systemd's watchdog kills the frozen primary (Result=watchdog)
#      10 s after its last ping.
#   4. Restart=on-failure and RestartPreventExitStatus=3: systemd restarts the killed primary
#      once, the restarted primary finds its peer active and exits 3, and the unit stays failed
#      (no restart scheduled; none after RestartSec either).
#   5. `journalctl -u colod-secondary@demo -o json` has the failover's records with their
#      COLOD_* fields (failover-begin, fence-run, failover-done, all three under
#      COLOD_EVENT=failover), the primary's unit has the refusal (COLOD_EVENT=refused) and
#      systemd's own records: the watchdog timeout, the kill, the restart, the exit status 3.
# It prints the figures: the time from SIGSTOP to the takeover and to the watchdog's kill, the
# takeover's own duration, the restart.
#
# Needs root, the Debian mirror (read from /etc/apt/sources.list*, --mirror overrides) for the
# first debootstrap, and, on this host, what nested.sh installs itself plus systemd-container
# (systemd-nspawn; the nested host runs this host's own programs):
#   apt-get install systemd-container debootstrap dpkg-dev
# The first run debootstraps (a few minutes); a run after that takes 6 to 7 minutes, most of it
# the nested machine under TCG. Everything it starts ends with it: the container is powered off,
# the nested machine stops, the root's copy is removed (--keep-root keeps it).
# --skip-unless-enabled (the ctest test systemd_units) exits 77, "skipped", unless
# COLOD_TEST_SYSTEMD=1. HOSTKVM_DIR (nested.sh's cache and run folder) defaults to the work
# folder's hostkvm/.
#
# Internally the script runs itself inside the nested host: units_test.sh --inside ROOT.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
say() { echo "units-test: $*"; }
fail() { echo "units-test: FAIL: $*" >&2; exit 1; }

# --------------------------------------------------------------------------------------------
# Inside the nested KVM host: boot the root with systemd and check the units.
# --------------------------------------------------------------------------------------------
inside() {
    local root=$1
    local log=$root/../container.log
    # Not local: the EXIT trap needs them after a fail() anywhere.
    nspawn="" leader=""
    local failures=0
    bad() { echo "units-test: FAIL: $*" >&2; failures=$((failures + 1)); }
    ok() { echo "units-test: ok: $*"; }

    # systemd in the container needs the unified cgroup hierarchy; nspawn puts the container in
    # a cgroup below its own, so it runs in one of its own.
    [ -c /dev/kvm ] || fail "no /dev/kvm in the nested host"
    if ! mountpoint -q /sys/fs/cgroup; then
        mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2 on /sys/fs/cgroup"
    fi
    mkdir -p /sys/fs/cgroup/units-test
    echo $$ > /sys/fs/cgroup/units-test/cgroup.procs

    stop_container() {
        [ -n "$nspawn" ] || return 0
        if kill -0 "$nspawn" 2>/dev/null; then
            # SIGTERM to nspawn: an orderly poweroff of the container's systemd.
            kill -TERM "$nspawn" 2>/dev/null || true
            local deadline=$((SECONDS + 90))
            while kill -0 "$nspawn" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
            if kill -0 "$nspawn" 2>/dev/null; then
                echo "units-test: the container did not power off in 90 s: killed" >&2
                kill -KILL "$nspawn" 2>/dev/null || true
            fi
        fi
        wait "$nspawn" 2>/dev/null || true
        nspawn=""
    }
    trap stop_container EXIT

    local boot_start=$SECONDS
    # --system-call-filter=bpf: nspawn's own seccomp filter denies bpf(), which systemd needs
    # for DevicePolicy= and DeviceAllow= (cgroup device programs); without it the container's
    # systemd applies no device policy at all and the units' DeviceAllow=/dev/kvm proves nothing.
    systemd-nspawn --quiet --boot --directory="$root" --machine=colod-units-test \
        --register=no --keep-unit --bind=/dev/kvm --system-call-filter=bpf --console=pipe \
        </dev/null >"$log" 2>&1 &
    nspawn=$!
    # The container's PID 1: the systemd whose PID in its own namespace is 1.
    local deadline=$((SECONDS + 60))
    while [ -z "$leader" ]; do
        kill -0 "$nspawn" 2>/dev/null || { cat "$log" >&2; fail "systemd-nspawn exited"; }
        [ $SECONDS -lt $deadline ] || { cat "$log" >&2; fail "no systemd in the container after 60 s"; }
        for status in /proc/[0-9]*/status; do
            if grep -q '^Name:[[:space:]]*systemd$' "$status" 2>/dev/null &&
                grep -Eq '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' "$status" 2>/dev/null; then
                leader=$(basename "$(dirname "$status")")
                break
            fi
        done
        [ -n "$leader" ] || sleep 0.5
    done
    # A command in the container: its namespaces and root, a clean environment.
    c() {
        timeout --kill-after=5 120 nsenter --target "$leader" --mount --uts --ipc --net --pid --cgroup --root --wd \
            /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_COLORS=0 SYSTEMD_PAGER= "$@"
    }
    local state=""
    deadline=$((SECONDS + 180))
    until [ "$state" = running ] || [ "$state" = degraded ]; do
        [ $SECONDS -lt $deadline ] || { tail -n 40 "$log" >&2; fail "the container's systemd is not up after 180 s (state: $state)"; }
        kill -0 "$nspawn" 2>/dev/null || { cat "$log" >&2; fail "systemd-nspawn exited"; }
        state=$(c systemctl is-system-running 2>/dev/null || true)
        case $state in running | degraded) ;; *) sleep 1 ;; esac
    done
    say "systemd $(c systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1 in the container" \
        "($state after $((SECONDS - boot_start)) s; $(c systemd-detect-virt))"
    if [ "$state" = degraded ]; then
        say "failed units (not colod's): $(c systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
    fi

    # show UNIT PROPERTY: one property's value.
    show() { c systemctl show -p "$2" --value "$1"; }
    # wait_for SECONDS WHAT COMMAND...: polls COMMAND (every 0.2 s) until it succeeds.
    wait_for() {
        local limit=$1 what=$2
        shift 2
        local end=$((SECONDS + limit))
        until "$@"; do
            if [ $SECONDS -ge $end ]; then
                bad "$what: not within $limit s"
                return 1
            fi
            sleep 0.2
        done
    }
    now_us() { python3 -c 'import time; print(time.monotonic_ns() // 1000)'; }  # the container's clock too
    # console PORT LINE REGEX: sends LINE to the guest's console, prints the first reply line
    # matching REGEX (within 30 s).
    console() {
        python3 - "$@" <<'EOF'
import re, socket, sys, time
port, line, pattern = int(sys.argv[1]), sys.argv[2], re.compile(sys.argv[3])
end = time.monotonic() + 30
with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
    s.sendall(line.encode() + b"\n")
    buf = b""
    while time.monotonic() < end:
        s.settimeout(max(0.1, end - time.monotonic()))
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
        for l in buf.decode(errors="replace").splitlines():
            if pattern.fullmatch(l.strip()):
                print(l.strip())
                sys.exit(0)
sys.exit("no reply matching %r to %r; got %r" % (pattern.pattern, line, buf[-200:]))
EOF
    }
    status_json() { c coloctl --config /etc/colod/demo.conf --role "$1" status --json 2>/dev/null; }
    json_field() { python3 -c 'import json, sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }
    daemon_state() { status_json "$1" | json_field state 2>/dev/null; }
    is_state() { [ "$(daemon_state "$1")" = "$2" ]; }


    local P=colod-primary@demo.service S=colod-secondary@demo.service

    # --- 1. Type=notify readiness and STATUS= ------------------------------------------------
    say "starting $S"
    # systemctl start (without --no-block) returns when the start job is done: for Type=notify,
    # when READY=1 came.
    c systemctl start "$S" || { c journalctl -u "$S" --no-pager | tail -n 30 >&2; fail "systemctl start $S failed"; }
    [ "$(show "$S" ActiveState)" = active ] && ok "$S active after systemctl start" || bad "$S: $(show "$S" ActiveState)"
    # Listening at that moment: its control socket answers and it stands by.
    is_state secondary standby && ok "the secondary stands by as soon as it is active" ||
        bad "the secondary is active but its status says '$(daemon_state secondary)'"
    local text
    text=$(show "$S" StatusText)
    case $text in standby*) ok "$S StatusText: $text" ;; *) bad "$S StatusText is '$text', not standby: ..." ;; esac

    say "starting $P"
    c systemctl start "$P" || { c journalctl -u "$P" --no-pager | tail -n 30 >&2; fail "systemctl start $P failed"; }
    [ "$(show "$P" ActiveState)" = active ] && ok "$P active after systemctl start" || bad "$P: $(show "$P" ActiveState)"
    # Ready means the guest runs: its console answers at once.
    local pong
    pong=$(console 4555 PING '^PONG$') && ok "the primary's guest answers at once: PING -> $pong" || bad "the primary's console: $pong"
    # Protected: the primary's STATUS= says so, the secondary's names the checkpoints applied.
    wait_for 120 "the primary protected" is_state primary protected && ok "the pair is protected"
    wait_for 30 "$P StatusText protected" sh -c "nsenter --target $leader --mount --pid --root \
        systemctl show -p StatusText --value $P | grep -q '^protected'"
    say "$P StatusText: $(show "$P" StatusText)"
    say "$S StatusText: $(show "$S" StatusText)"

    # --- 2. The sandbox leaves /dev/kvm usable ------------------------------------------------
    local pid
    pid=$(show "$P" MainPID)
    c journalctl -u "$P" COLOD_EVENT=started -o cat --no-pager | grep -q 'on the kvm backend' &&
        ok "the primary's guest runs on the kvm backend" || bad "the primary's started record does not say kvm backend"
    local fds
    fds=$(c sh -c "ls -l /proc/$pid/fd" | sed 's/.*-> //' | sort | uniq -c | tr -s ' ' | tr '\n' ';')
    echo "$fds" | grep -Eq ' (/host)?/dev/kvm;' && echo "$fds" | grep -q 'anon_inode:kvm-vm;' && echo "$fds" | grep -q 'anon_inode:kvm-vcpu' &&
        ok "colod-primary (pid $pid) holds /dev/kvm, a KVM VM and its vCPU" || bad "colod-primary's files: $fds"
    local proc_status
    proc_status=$(c cat "/proc/$pid/status")
    local nnp seccomp capeff capbnd
    nnp=$(echo "$proc_status" | awk '$1 == "NoNewPrivs:" { print $2 }')
    seccomp=$(echo "$proc_status" | awk '$1 == "Seccomp:" { print $2 }')
    capeff=$(echo "$proc_status" | awk '$1 == "CapEff:" { print $2 }')
    capbnd=$(echo "$proc_status" | awk '$1 == "CapBnd:" { print $2 }')
    # CAP_NET_BIND_SERVICE is capability 10: 0x400.
    [ "$nnp" = 1 ] && [ "$seccomp" = 2 ] && [ "$capbnd" = 0000000000000400 ] && [ "$capeff" = 0000000000000400 ] &&
        ok "under the sandbox: NoNewPrivs $nnp, Seccomp $seccomp (filter), CapBnd $capbnd, CapEff $capeff" ||
        bad "the primary's sandbox: NoNewPrivs $nnp Seccomp $seccomp CapBnd $capbnd CapEff $capeff"
    local oom nofile
    oom=$(c cat "/proc/$pid/oom_score_adj")
    nofile=$(c awk '/^Max open files/ { print $4 }' "/proc/$pid/limits")
    [ "$oom" = -900 ] && [ "$nofile" = 65536 ] && ok "OOMScoreAdjust $oom, LimitNOFILE $nofile" ||
        bad "the primary's oom_score_adj is $oom and its open files limit $nofile (the unit says -900 and 65536)"
    local rootmount
    rootmount=$(c awk '$5 == "/" { o = $6 } END { print o }' "/proc/$pid/mountinfo")
    case ,$rootmount, in *,ro,*) ok "the primary's / is read-only (ProtectSystem=strict): $rootmount" ;;
                         *) bad "the primary's / is mounted '$rootmount', not read-only" ;; esac
    # The device policy is enforced here (a container's systemd could lack the BPF device
    # controller and ignore it silently): the unit's policy without its DeviceAllow=/dev/kvm
    # cannot open /dev/kvm, with it can.
    if c systemd-run --quiet --wait --collect --pipe -p DevicePolicy=closed /bin/sh -c 'exec 3<>/dev/kvm' 2>/dev/null; then
        bad "DevicePolicy=closed without DeviceAllow=/dev/kvm opened /dev/kvm: the device policy is not enforced"
    elif c systemd-run --quiet --wait --collect --pipe -p DevicePolicy=closed -p 'DeviceAllow=/dev/kvm rw' \
            /bin/sh -c 'exec 3<>/dev/kvm'; then
        ok "DevicePolicy=closed is enforced: /dev/kvm opens only with DeviceAllow=/dev/kvm rw"
    else
        bad "DevicePolicy=closed with DeviceAllow=/dev/kvm rw cannot open /dev/kvm"
    fi

    # --- 3. The watchdog kills a frozen primary; the secondary takes over -----------------------
    local reply
    reply=$(console 4555 'SET units-test before-the-freeze' '^OK$') && ok "SET through the primary's console: $reply" ||
        bad "SET through the primary's console: $reply"
    local restarts0 watchdog_usec secondary_pid
    restarts0=$(show "$P" NRestarts)
    secondary_pid=$(show "$S" MainPID)
    watchdog_usec=$(show "$P" WatchdogUSec)
    # SIGSTOP from here, to the daemon's PID in this namespace, timed where it is sent (this
    # clock is the container's: one kernel).
    local outer_pid="" t_stop last_ping leader_ns
    leader_ns=$(readlink "/proc/$leader/ns/pid")
    for status in /proc/[0-9]*/status; do
        if awk -v p="$pid" '$1 == "NSpid:" && $3 == p { found = 1 } END { exit !found }' "$status" 2>/dev/null &&
            [ "$(readlink "$(dirname "$status")/ns/pid")" = "$leader_ns" ]; then
            outer_pid=$(basename "$(dirname "$status")")
            break
        fi
    done
    [ -n "$outer_pid" ] || fail "the primary's pid $pid has no PID in this namespace"
    t_stop=$(python3 -c 'import os, signal, sys, time
t = time.monotonic_ns() // 1000
os.kill(int(sys.argv[1]), signal.SIGSTOP)
print(t)' "$outer_pid")
    last_ping=$(show "$P" WatchdogTimestampMonotonic)
    say "froze colod-primary (pid $pid) with SIGSTOP; its last watchdog ping was $(( (t_stop - last_ping) / 1000 )) ms before (WatchdogUSec=$watchdog_usec)"
    local t_active="" t_killed=""
    local end=$((SECONDS + 60))
    while [ $SECONDS -lt $end ] && { [ -z "$t_active" ] || [ -z "$t_killed" ]; }; do
        if [ -z "$t_active" ] && show "$S" StatusText | grep -q '^active'; then t_active=$(now_us); fi
        if [ -z "$t_killed" ] && ! c test -e "/proc/$pid"; then t_killed=$(now_us); fi
        sleep 0.2
    done
    [ -n "$t_active" ] && ok "the secondary's StatusText said active $(( (t_active - t_stop) / 1000 )) ms after the SIGSTOP (polled)" ||
        bad "the secondary did not take over within 60 s of the SIGSTOP"
    [ -n "$t_killed" ] && ok "the frozen primary was gone $(( (t_killed - t_stop) / 1000 )) ms after the SIGSTOP (polled)" ||
        bad "the frozen primary still exists 60 s after the SIGSTOP"
    say "$S StatusText: $(show "$S" StatusText)"
    reply=$(console 4556 'GET units-test' '^before-the-freeze$') &&
        ok "the secondary's guest has the key set before the freeze: GET -> $reply" || bad "GET on the secondary's console: $reply"
    is_state secondary active && ok "coloctl: the secondary is active" || bad "the secondary's state: $(daemon_state secondary)"
    # It fenced and took over in the same process: nothing killed or restarted it.
    [ "$(show "$S" MainPID)" = "$secondary_pid" ] && [ "$(show "$S" NRestarts)" = 0 ] &&
        ok "the secondary fenced and took over in the same process (pid $secondary_pid, NRestarts 0)" ||
        bad "the secondary is pid $(show "$S" MainPID) with NRestarts $(show "$S" NRestarts), not pid $secondary_pid with 0"

    # --- 4. Restart=on-failure, then RestartPreventExitStatus=3 ---------------------------------
    # The watchdog's kill is a failure: systemd restarts the primary after RestartSec, the
    # restarted primary finds its peer active and exits 3, and the unit stays failed.
    primary_refused() {
        [ "$(show "$P" ActiveState)" = failed ] && [ "$(show "$P" ExecMainStatus)" = 3 ]
    }
    wait_for 90 "$P failed with exit status 3 after its restart" primary_refused
    local restarts result substate jobs
    restarts=$(show "$P" NRestarts)
    result=$(show "$P" Result)
    substate=$(show "$P" SubState)
    [ "$restarts" = $((restarts0 + 1)) ] && ok "systemd restarted the killed primary once (NRestarts $restarts)" ||
        bad "NRestarts is $restarts, not $((restarts0 + 1))"
    [ "$result" = exit-code ] && [ "$substate" = failed ] &&
        ok "the restarted primary exited 3: Result=$result, SubState=$substate (no restart scheduled)" ||
        bad "after the refusal: Result=$result SubState=$substate ExecMainStatus=$(show "$P" ExecMainStatus)"
    jobs=$(c systemctl list-jobs --plain --no-legend "$P")
    [ -z "$jobs" ] && ok "no job queued for $P" || bad "a job is queued for $P: $jobs"
    # Stays down: still failed, no restart, after RestartSec and more (a window, not a synchronisation).
    local restart_sec
    restart_sec=$(show "$P" RestartUSec)
    local still_down_until=$((SECONDS + 15))
    while [ $SECONDS -lt $still_down_until ]; do
        [ "$(show "$P" NRestarts)" = "$restarts" ] && [ "$(show "$P" ActiveState)" = failed ] || break
        sleep 1
    done
    [ "$(show "$P" NRestarts)" = "$restarts" ] && [ "$(show "$P" ActiveState)" = failed ] &&
        ok "$P stayed failed for 15 s (RestartSec=$restart_sec)" || bad "$P restarted again: $(show "$P" ActiveState) NRestarts $(show "$P" NRestarts)"

    # RuntimeDirectoryPreserve=yes: the primary's unit stopping left /run/colod, where the
    # active secondary's control socket is.
    is_state secondary active && ok "the secondary's control socket in /run/colod outlived the primary's unit" ||
        bad "the secondary's control socket does not answer after the primary's unit failed"

    # --- 5. The journal -----------------------------------------------------------------------
    local journal_dir=$root/../journal
    mkdir -p "$journal_dir"
    c journalctl -u "$S" -o json --no-pager > "$journal_dir/secondary.json"
    c journalctl -u "$P" -o json --no-pager > "$journal_dir/primary.json"
    # The secondary's unit comment: this one match tells the whole failover.
    c journalctl -u "$S" COLOD_EVENT=failover -o json --no-pager > "$journal_dir/failover.json"
    if python3 - "$journal_dir/secondary.json" "$journal_dir/primary.json" "$t_stop" "$journal_dir/failover.json" \
        "$last_ping" <<'EOF'
import json, sys
def records(path):
    return [json.loads(l) for l in open(path) if l.strip()]
sec, pri, t_stop = records(sys.argv[1]), records(sys.argv[2]), int(sys.argv[3])
failed = 0
def bad(msg):
    global failed
    failed += 1
    print("units-test: FAIL: " + msg, file=sys.stderr)
def values(r, field):  # a field given several times is a list in journalctl's JSON
    v = r.get(field)
    return v if isinstance(v, list) else [] if v is None else [v]
def event(recs, name):
    return [r for r in recs if name in values(r, "COLOD_EVENT")]
def first(recs, text, after=0):
    for r in recs:
        m = r.get("MESSAGE", "")
        if isinstance(m, str) and text in m and int(r["__MONOTONIC_TIMESTAMP"]) >= after:
            return r
    return None
for name, fields in (("failover-begin", ("COLOD_SEQ", "COLOD_REASON")),
                     ("failover-done", ("COLOD_SEQ", "COLOD_DURATION_MS"))):
    found = event(sec, name)
    if len(found) != 1:
        bad(f"{len(found)} {name} records in journalctl -u colod-secondary@demo -o json, not 1")
        continue
    r = found[0]
    if "failover" not in values(r, "COLOD_EVENT"):
        bad(f"the {name} record lacks COLOD_EVENT=failover: {values(r, 'COLOD_EVENT')}")
    for f in ("COLOD_VM", "COLOD_ROLE", "PRIORITY", "MESSAGE") + fields:
        if f not in r:
            bad(f"the {name} record lacks {f}: {r}")
    if r.get("COLOD_VM") != "demo" or r.get("COLOD_ROLE") != "secondary":
        bad(f"the {name} record says COLOD_VM={r.get('COLOD_VM')} COLOD_ROLE={r.get('COLOD_ROLE')}")
    if int(r["__MONOTONIC_TIMESTAMP"]) < t_stop:
        bad(f"the {name} record is older than the SIGSTOP")
    print(f"units-test: ok: {name}: " + " ".join(f"{f}={r.get(f)}" for f in ("COLOD_VM", "COLOD_ROLE") + fields)
          + f" ({(int(r['__MONOTONIC_TIMESTAMP']) - t_stop) // 1000} ms after the SIGSTOP)")
# Type=notify: the unit turned active when READY=1 came, which the daemon sends right after
# its started record. Both the daemon and systemd (PID 1) write to journald's one native
# socket, so their records keep the order they were sent in (the sequence number of the
# cursor): the daemon's started record comes before systemd's "Started ..." for the unit (with
# Type=simple, systemd's would come first, at the fork).
def seqnum(r):
    return int(dict(p.split("=", 1) for p in r["__CURSOR"].split(";"))["i"], 16)
def systemd_says(recs, text):
    return [r for r in recs if r.get("_PID") == "1" and str(r.get("MESSAGE", "")).startswith(text)]
for unit, recs in (("colod-secondary@demo.service", sec), ("colod-primary@demo.service", pri)):
    started = event(recs, "started")
    active = systemd_says(recs, "Started ")
    if not started or not active:
        bad(f"{unit}: {len(started)} started records, {len(active)} 'Started' records of systemd")
    elif seqnum(started[0]) < seqnum(active[0]):
        gap = (int(active[0]["__MONOTONIC_TIMESTAMP"]) - int(started[0]["__MONOTONIC_TIMESTAMP"])) / 1000
        print(f"units-test: ok: {unit}: the daemon's started record, then systemd's '{active[0]['MESSAGE']}'"
              f" ({gap:.1f} ms later)")
    else:
        bad(f"{unit}: systemd said '{active[0]['MESSAGE']}' before the daemon's started record")
# The restarted primary refused before READY=1: systemd never called it started a second time.
starts = systemd_says(pri, "Started ")
if len(starts) != 1:
    bad(f"systemd says the primary started {len(starts)} times, not once")
fence = event(sec, "fence-run")
if len(fence) != 1:
    bad(f"{len(fence)} fence-run records, not 1")
else:
    r = fence[0]
    print(f"units-test: ok: fence-run: COLOD_FENCE_STATUS={r.get('COLOD_FENCE_STATUS')} '{r.get('MESSAGE')}'")
    if r.get("COLOD_FENCE_STATUS") != "0":
        bad(f"the fence command's status is {r.get('COLOD_FENCE_STATUS')}")
if first(sec, "Watchdog timeout"):
    bad("systemd's watchdog fired for colod-secondary@demo")
story = [next((v for v in values(r, "COLOD_EVENT") if v != "failover"), "failover") for r in records(sys.argv[4])]
if "failover-begin" in story and "failover-done" in story:
    print(f"units-test: ok: journalctl -u colod-secondary@demo COLOD_EVENT=failover: {' '.join(story)}")
else:
    bad(f"journalctl -u colod-secondary@demo COLOD_EVENT=failover gave {story}")
refused = event(pri, "refused")
if len(refused) != 1:
    bad(f"{len(refused)} refused records in journalctl -u colod-primary@demo -o json, not 1")
else:
    r = refused[0]
    print(f"units-test: ok: refused: COLOD_ROLE={r.get('COLOD_ROLE')} COLOD_PEER={r.get('COLOD_PEER')} COLOD_REASON={r.get('COLOD_REASON')}")
# systemd's own records of the unit: the watchdog, the kill, the restart, the refusal's exit.
wd = first(pri, "Watchdog timeout", t_stop)
if not wd:
    bad("systemd logged no 'Watchdog timeout' for colod-primary@demo")
else:
    last_ping = int(sys.argv[5])
    print(f"units-test: ok: systemd: '{wd['MESSAGE']}' {(int(wd['__MONOTONIC_TIMESTAMP']) - t_stop) // 1000} ms after the SIGSTOP, "
          f"{(int(wd['__MONOTONIC_TIMESTAMP']) - last_ping) // 1000} ms after the daemon's last ping")
    for text in ("Main process exited", "Failed with result 'watchdog'", "Scheduled restart job",
                 "status=3/"):
        r = first(pri, text, int(wd["__MONOTONIC_TIMESTAMP"]))
        if not r:
            bad(f"no systemd record '{text}' after the watchdog timeout")
        else:
            print(f"units-test: ok: systemd: '{r['MESSAGE']}' {(int(r['__MONOTONIC_TIMESTAMP']) - t_stop) // 1000} ms after the SIGSTOP")
sys.exit(1 if failed else 0)
EOF
    then :; else failures=$((failures + 1)); fi

    # --- The end: the active secondary stops cleanly, the container powers off -----------------
    c systemctl stop "$S"
    [ "$(show "$S" ActiveState)" = inactive ] && ok "$S stopped cleanly (Result=$(show "$S" Result))" ||
        bad "$S after stop: $(show "$S" ActiveState) Result=$(show "$S" Result)"
    stop_container
    trap - EXIT
    if [ "$failures" -ne 0 ]; then
        echo "units-test: $failures check(s) failed (container log: $log)" >&2
        exit 1
    fi
    say "PASS"
}

if [ "${1:-}" = --inside ]; then
    inside "$2"
    exit 0
fi

# --------------------------------------------------------------------------------------------
# On this host: the package, the root, the nested machine.
# --------------------------------------------------------------------------------------------
build=$top/build-systemd
work=""
mirror=""
keep_root=0
skip_unless_enabled=0
while [ $# -gt 0 ]; do
    case $1 in
    --build-dir) build=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --keep-root) keep_root=1; shift ;;
    --skip-unless-enabled) skip_unless_enabled=1; shift ;;
    *) echo "usage: $0 [--build-dir DIR] [--work-dir DIR] [--mirror URL] [--keep-root] [--skip-unless-enabled]" >&2; exit 2 ;;
    esac
done
if [ "$skip_unless_enabled" = 1 ] && [ "${COLOD_TEST_SYSTEMD:-}" != 1 ]; then
    echo "units-test: skipped (set COLOD_TEST_SYSTEMD=1 to boot systemd with the units in a nested KVM host)"
    exit 77
fi
[ "$(id -u)" -eq 0 ] || fail "must run as root (debootstrap, chroot, nested.sh)"
work=${work:-$build/units-test}
mkdir -p "$work"
work=$(cd "$work" && pwd)

for tool in debootstrap systemd-nspawn dpkg-shlibdeps cpack; do
    command -v "$tool" >/dev/null ||
        fail "$tool is missing (apt-get install debootstrap systemd-container dpkg-dev cmake)"
done

# The mirror apt uses here, as packaging/test-deb.sh finds it.
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' | head -n 1)
fi
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
             awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
fi

# 1. The package.
start=$SECONDS
say "building the package in $build"
cmake -S "$top" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOLOD_TESTS=OFF >/dev/null
ninja -C "$build" -j"${JOBS:-2}" >/dev/null
rm -rf "$work/package"
(cd "$work" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work/package" >"$work/cpack.log" 2>&1) ||
    { tail -n 20 "$work/cpack.log" >&2; fail "cpack failed (log: $work/cpack.log)"; }
deb=$(ls "$work"/package/colod_*.deb)
say "built $(basename "$deb") in $((SECONDS - start)) s"

# 2. A bookworm root with systemd and the package's dependencies, made once.
depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' | grep . | sort -u | tr '\n' ',')
include="systemd,systemd-sysv,dbus,${depends%,}"
pristine=$work/bookworm-systemd
if [ ! -f "$pristine/.colod-complete" ] || [ "$(cat "$pristine/.colod-complete")" != "$include" ]; then
    [ -n "$mirror" ] || fail "no Debian mirror found in /etc/apt/sources.list*; pass --mirror URL"
    say "debootstrapping bookworm (minbase + $include) from $mirror into $pristine"
    rm -rf "$pristine" "$pristine.partial"
    start=$SECONDS
    debootstrap --variant=minbase --include="$include" bookworm "$pristine.partial" "$mirror" \
        >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap failed (log: $work/debootstrap.log)"; }
    mv "$pristine.partial" "$pristine"
    echo "$include" > "$pristine/.colod-complete"
    say "debootstrap took $((SECONDS - start)) s"
fi

# 3. This run's copy, the package installed, the pair's config.
root=$work/root
rm -rf "$root" "$work/journal" "$work/container.log"
cleanup() {
    if [ "$keep_root" = 1 ]; then say "root kept in $root"; else rm -rf "$root"; fi
}
trap cleanup EXIT
cp -a "$pristine/." "$root/"
rm -f "$root/.colod-complete"
cp "$deb" "$root/tmp/colod.deb"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 dpkg -i /tmp/colod.deb \
    >"$work/dpkg.log" 2>&1 || { tail -n 20 "$work/dpkg.log" >&2; fail "dpkg -i of the package failed (log: $work/dpkg.log)"; }
rm -f "$root/tmp/colod.deb"
say "installed $(chroot "$root" dpkg-query -W -f='${Package} ${Version}' colod) into $root"
# The container's identity and a quiet boot: no getty on its console.
: > "$root/etc/machine-id"
echo colod-units-test > "$root/etc/hostname"
# The pair: both daemons on loopback in this one systemd. Heartbeats and checkpoints are slower
# than in production: the nested machine runs under TCG (a timeout that fires from the
# emulator's slowness would be a failover nobody asked for).
cat > "$root/etc/colod/demo.conf" <<'EOF'
[vm]
name = demo
memory = 64M
vcpus = 1
image = builtin:kvstore
accelerator = kvm
[replication]
mode = checkpoint
checkpoint-interval = 200ms
heartbeat-interval = 200ms
heartbeat-timeout = 3s
# A fence that succeeds. Short: a takeover that ends later than RestartSec plus the restarted
# primary's start-up meets that primary (colod-primary@.service, "Restart policy").
fence-command = sleep 2
auth-key-file = /etc/colod/demo.key
[primary]
replication = 127.0.0.1:9400
console = 127.0.0.1:4555
control = /run/colod/demo-primary.sock
[secondary]
replication = 127.0.0.1:9401
console = 127.0.0.1:4556
control = /run/colod/demo-secondary.sock
EOF
head -c 32 /dev/urandom > "$root/etc/colod/demo.key"
chmod 600 "$root/etc/colod/demo.key" "$root/etc/colod/demo.conf"

# 4. The nested KVM host runs the checks (this script, --inside).
export HOSTKVM_DIR=${HOSTKVM_DIR:-$work/hostkvm}
export HOSTKVM_TCG_THREAD=${HOSTKVM_TCG_THREAD:-multi}
# The embedded guest never triple-faults on purpose.
export HOSTKVM_GUEST_SHUTDOWN=${HOSTKVM_GUEST_SHUTDOWN:-platform}
say "booting the nested KVM host (HOSTKVM_DIR=$HOSTKVM_DIR)"
set +e
"$top/tests/hostkvm/nested.sh" --writable "$work" -- "$here/units_test.sh" --inside "$root"
status=$?
set -e
exit "$status"
