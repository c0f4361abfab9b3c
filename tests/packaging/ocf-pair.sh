# SPDX-License-Identifier: GPL-2.0-or-later
# Sourced by the tests of the OCF resource agent (packaging/ocf/colod): a colod pair on this
# host over loopback, in a fresh temporary directory, driven through two agent instances, one
# per section of the config (colod-p: [primary], colod-s: [secondary]). Every daemon the agent
# starts writes its pid file under $work/run; the EXIT trap ends each of them by that pid.
#
# Needs: BIN_DIR (colod-primary, colod-secondary, coloctl) and AGENT set by the sourcing test.

work=$(mktemp -d /tmp/colod-ocf.XXXXXX)
say() { echo "ocf-test: $*"; }
fail() {
    echo "ocf-test: FAIL: $*" >&2
    for log in "$work"/*.log; do
        [ -f "$log" ] || continue
        echo "--- $log, last lines:" >&2
        tail -n 30 "$log" >&2
    done
    exit 1
}

# The daemons this test started: every pid file the agent wrote, if its process is still a
# colod daemon of this test's config. Then the directory goes (kept with COLOD_KEEP_TEST_DIRS).
cleanup() {
    status=$?
    for pidfile in "$work"/run/colod-*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if grep -q "$work/pair.conf" "/proc/$pid/cmdline" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    for pid in $extra_pids; do kill -KILL "$pid" 2>/dev/null; done
    if [ -n "${COLOD_KEEP_TEST_DIRS:-}" ] || [ "$status" != 0 ]; then
        echo "ocf-test: files kept in $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
extra_pids=""
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

# The pair's address: a loopback address of its own (all of 127.0.0.0/8 is this host's), so that
# the tests running beside this one, which bind their ports on 127.0.0.1, cannot take a port of
# this pair between the moment it is chosen and a restart of a daemon that binds it.
random_byte() {
    echo $(( $(od -An -N1 -tu1 /dev/urandom | tr -d ' ') % 250 + 2 ))
}
pair_ip=127.$(random_byte).$(random_byte).$(random_byte)

# A TCP port that no socket uses on any address, below the ephemeral range (as
# tests/support/free_port.h picks them), never the same twice in one test.
used_ports=""
free_port() {
    while :; do
        port=$(( $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 22000 + 10000 ))
        case " $used_ports " in *" $port "*) continue ;; esac
        if [ -z "$(ss -Htan "sport = :$port" 2>/dev/null)" ]; then
            used_ports="$used_ports $port"
            echo "$port"
            return
        fi
    done
}

# Durations times COLOD_TEST_TIME_SCALE (daemons nested in an emulated machine run far slower).
scale=${COLOD_TEST_TIME_SCALE:-1}
backend=${COLOD_TEST_BACKEND:-}
if [ -z "$backend" ]; then
    if [ -w /dev/kvm ] && [ -r /dev/kvm ] && [ "${COLOD_HOST_KVM:-1}" != 0 ]; then backend=kvm; else backend=soft; fi
fi
say "guests run on the $backend backend; the pair is on $pair_ip"

mkdir -p "$work/run"
head -c 32 /dev/urandom >"$work/pair.key"
chmod 600 "$work/pair.key"
cat >"$work/pair.conf" <<EOF
[vm]
name = ocfdemo
memory = 64M
vcpus = 1
image = builtin:kvstore
accelerator = $backend

[replication]
mode = checkpoint
checkpoint-interval = 20ms
heartbeat-interval = $((20 * scale))ms
heartbeat-timeout = $((300 * scale))ms
# Pacemaker decides takeovers: the daemons never do by themselves.
fence-command = false
auth-key-file = pair.key

[primary]
replication = $pair_ip:$(free_port)
console = $pair_ip:$(free_port)
control = $work/primary.sock

[secondary]
replication = $pair_ip:$(free_port)
console = $pair_ip:$(free_port)
control = $work/secondary.sock
EOF

# The agent's environment, as Pacemaker gives it (the timeout of each action in ms). OCF_ROOT
# is resource-agents' when it is installed; the agent works without it too.
export OCF_ROOT=/usr/lib/ocf
export HA_RSCTMP="$work/run"
export OCF_RESKEY_config="$work/pair.conf"
export OCF_RESKEY_coloctl="$BIN_DIR/coloctl"
export OCF_RESKEY_daemon_dir="$BIN_DIR"
export OCF_RESKEY_CRM_meta_timeout=$((60000 * scale))

# ra INSTANCE ACTION: runs the agent as that instance; its output goes to $work/agent.log.
ra() {
    instance=$1
    action=$2
    case $instance in
    colod-p) role=primary ;;
    *) role=secondary ;;
    esac
    interval=10000
    [ "$action" = probe ] && { action=monitor; interval=0; }
    OCF_RESOURCE_INSTANCE=$instance OCF_RESKEY_role=$role OCF_RESKEY_logfile="$work/$instance.log" \
        OCF_RESKEY_CRM_meta_interval=$interval "$AGENT" "$action" >>"$work/agent.log" 2>&1
}

# expect RC INSTANCE ACTION: the agent's exit status must be RC.
expect() {
    want=$1; shift
    ra "$@"
    got=$?
    [ "$got" = "$want" ] || fail "$1 $2 returned $got, expected $want (agent log: $work/agent.log)"
    say "$1 $2 -> $got"
}

# status ROLE: the daemon's status JSON on that section's control socket.
status_json() {
    timeout 10 "$BIN_DIR/coloctl" --config "$work/pair.conf" --role "$1" status --json 2>/dev/null
}
json_field() {
    sed -n "s/.*\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\}[,}].*/\1/p" | head -n 1
}

# until_true SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
until_true() {
    limit=$(( $1 * scale )); shift
    what=$1; shift
    deadline=$(( $(date +%s) + limit ))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within $limit s"
        sleep 0.1
    done
}
# in_state ROLE STATE [SEQ>0]: that daemon reports STATE (and, with a third word, a checkpoint).
in_state() {
    json=$(status_json "$1") || return 1
    [ "$(echo "$json" | json_field state)" = "$2" ] || return 1
    [ $# -lt 3 ] || [ "$(echo "$json" | json_field seq)" -gt 0 ]
}
peer_gone() {
    json=$(status_json "$1") || return 1
    [ "$(echo "$json" | json_field peer_state)" != connected ]
}

# process_gone PID: the process has exited (gone, or a zombie its new parent has not reaped yet).
process_gone() {
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -z "$state" ] || [ "$state" = Z ]
}

# console ROLE LINE: the guest's answer to LINE on that section's console.
console() {
    printf '%s\n' "$2" | timeout 30 "$BIN_DIR/coloctl" --config "$work/pair.conf" --role "$1" console 2>/dev/null |
        grep -v '^Connected to\|^Escape character' | tr -d '\r' | grep -v '^$' | tail -n 1
}
