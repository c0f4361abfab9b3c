#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# The OCF resource agent (packaging/ocf/colod) against real daemons: a one-host pair driven as
# Pacemaker would drive a promotable clone, action by action, checking each exit status:
#   validate-all (a bad config is OCF_ERR_CONFIGURED), monitor of a stopped resource (7),
#   start (0) and monitor (0) of both instances, promote of the [primary] instance (the guest
#   starts from nothing, monitor 8), the promotion scores, kill -9 of the primary, the refusal
#   of a cold start while the peer's score says it holds the replica, promote of the standby
#   (takeover: monitor 8, the guest's data survived), re-protection, demote (the
#   guest stops here without a handover; monitor 0) and promote back, a frozen active daemon
#   (monitor 1, demote kills it, the standby takes over), stop twice (0, 0) and monitor (7).
#
#   tests/packaging/ocf-agent-test.sh BIN_DIR AGENT
set -u
if [ $# -ne 2 ]; then
    echo "usage: $0 BIN_DIR AGENT" >&2
    exit 2
fi
BIN_DIR=$(cd "$1" && pwd)
AGENT=$2
. "$(dirname "$0")/ocf-pair.sh"

# Promotion scores, as a cluster would get them: a crm_attribute in PATH that writes down what
# it was asked, and the clone meta attribute that tells the agent it runs in a cluster.
# The two instances stand for two nodes, hosta and hostb (crm_node); a query of a node's score
# (crm_attribute -G -N NODE) answers the last score that node's instance set.
mkdir -p "$work/bin"
cat >"$work/bin/crm_attribute" <<'END'
#!/bin/sh
case " $* " in
*" -G "*)
    node=$(echo " $* " | sed -n 's/.* -N \([^ ]*\) .*/\1/p')
    case $node in hosta) instance=colod-p ;; *) instance=colod-s ;; esac
    last=$(sed -n "s/^$instance .*--promotion -l reboot //p" "$SCORES" | tail -n 1)
    case $last in "-v "*) echo "${last#-v }" ;; *) exit 6 ;; esac ;;
*) echo "$OCF_RESOURCE_INSTANCE $*" >>"$SCORES" ;;
esac
END
cat >"$work/bin/crm_node" <<'END'
#!/bin/sh
case $1 in
-n) if [ "$OCF_RESOURCE_INSTANCE" = colod-p ]; then echo hosta; else echo hostb; fi ;;
-l) printf '1 hosta member\n2 hostb member\n' ;;
esac
END
chmod 755 "$work/bin/crm_attribute" "$work/bin/crm_node"
export SCORES="$work/scores"
PATH="$work/bin:$PATH"
export OCF_RESKEY_CRM_meta_clone_max=2
last_score() {
    sed -n "s/^$1 .*--promotion -l reboot //p" "$work/scores" | tail -n 1
}
expect_score() {
    got=$(last_score "$1")
    [ "$got" = "$2" ] || fail "$1: last promotion score '$got', expected '$2'"
    say "$1 promotion score: $2"
}

# 1. validate-all.
expect 0 colod-p validate-all
cp "$work/pair.conf" "$work/good.conf"
sed 's/^memory = .*/memory = 12/' "$work/good.conf" >"$work/pair.conf"
expect 6 colod-p validate-all
sed 's/^fence-command = .*/fence-command =/' "$work/good.conf" >"$work/pair.conf"
expect 6 colod-p validate-all
OCF_RESKEY_role=neither OCF_RESOURCE_INSTANCE=colod-x "$AGENT" validate-all >>"$work/agent.log" 2>&1
[ $? = 6 ] || fail "validate-all with role=neither is not OCF_ERR_CONFIGURED"
say "colod-x validate-all (role=neither) -> 6"
# Without role, the section whose replication address this host holds: here both (refused),
# or neither (not a host of the pair).
cp "$work/good.conf" "$work/pair.conf"
OCF_RESOURCE_INSTANCE=colod-x "$AGENT" validate-all >>"$work/agent.log" 2>&1
[ $? = 6 ] || fail "validate-all without role on a host that holds both sections is not OCF_ERR_CONFIGURED"
say "colod-x validate-all (no role, both sections here) -> 6"
sed 's/^replication = 127\.[0-9.]*:/replication = 198.51.100.1:/' "$work/good.conf" >"$work/pair.conf"
OCF_RESOURCE_INSTANCE=colod-x "$AGENT" validate-all >>"$work/agent.log" 2>&1
[ $? = 5 ] || fail "validate-all without role on a host of neither section is not OCF_ERR_INSTALLED"
say "colod-x validate-all (no role, neither section here) -> 5"
cp "$work/good.conf" "$work/pair.conf"
OCF_RESKEY_config="$work/missing.conf" OCF_RESOURCE_INSTANCE=colod-x "$AGENT" validate-all >>"$work/agent.log" 2>&1
[ $? = 5 ] || fail "validate-all with a missing config file is not OCF_ERR_INSTALLED"
say "colod-x validate-all (missing config) -> 5"
"$AGENT" meta-data | grep -q '<action name="promote"' || fail "meta-data lacks the promote action"

# Without resource-agents' ocf-shellfuncs the agent uses its own helpers: the same answers.
mkdir -p "$work/no-shellfuncs"
export OCF_FUNCTIONS_DIR="$work/no-shellfuncs"
expect 0 colod-s validate-all
sed 's/^memory = .*/memory = 12/' "$work/good.conf" >"$work/pair.conf"
expect 6 colod-s validate-all
cp "$work/good.conf" "$work/pair.conf"
expect 7 colod-s probe
# A daemon that cannot start (a key file others may read): start fails and says why.
chmod 644 "$work/pair.key"
expect 1 colod-s start
grep -q "ocf-exit-reason:colod-secondary did not come up (exit status 2): .*auth-key-file" "$work/agent.log" ||
    fail "the failed start does not give the daemon's reason: $(grep ocf-exit-reason "$work/agent.log" | tail -n 1)"
chmod 600 "$work/pair.key"
expect 7 colod-s monitor
expect 0 colod-s start
expect 0 colod-s monitor
expect 0 colod-s stop
expect 7 colod-s monitor
unset OCF_FUNCTIONS_DIR

# A daemon started without the agent (by hand, or by a unit left enabled): monitor reports it and
# stop takes it over and ends it.
"$BIN_DIR/colod-secondary" --config "$work/pair.conf" >"$work/by-hand.log" 2>&1 &
by_hand=$!
extra_pids="$extra_pids $by_hand"
until_true 30 "the secondary started by hand answers" in_state secondary standby
expect 0 colod-s monitor
expect 0 colod-s stop
expect 7 colod-s monitor
wait "$by_hand" || fail "the secondary started by hand did not exit 0 on the agent's stop"
if [ -r /usr/lib/ocf/lib/heartbeat/ocf-shellfuncs ]; then
    say "from here on with resource-agents' ocf-shellfuncs"
else
    say "resource-agents is not installed: the whole test runs on the agent's own helpers"
fi

# 2. Nothing runs yet.
expect 7 colod-p probe
expect 7 colod-s probe
expect 7 colod-p monitor
# On a host that holds both sections' addresses, the [primary] instance waits for the other.
expect 1 colod-p start
expect 7 colod-p monitor

# 3. Both started: empty standbys. Only the [primary] host may start the guest from nothing.
expect 0 colod-s start
expect 0 colod-s monitor
expect 0 colod-p start
expect 0 colod-p monitor
expect 0 colod-p start
expect_score colod-p "-v 5"
[ "$(last_score colod-s)" = "-D" ] || fail "colod-s (empty, [secondary] host) has a promotion score: $(last_score colod-s)"
say "colod-s promotion score: none"
expect 1 colod-s promote
expect 0 colod-s monitor

# 4. Promote the [primary] instance: the guest starts from nothing and protects itself.
expect 0 colod-p promote
expect 8 colod-p monitor
expect 0 colod-p promote
expect_score colod-p "-v 1000"
until_true 120 "the secondary holds a checkpoint" in_state secondary standby seq
until_true 60 "the primary is protected" in_state primary protected
expect 0 colod-s monitor
expect_score colod-s "-v 100"
[ "$(console primary 'SET ocf survived')" = OK ] || fail "SET on the primary's console"
timeout 30 "$BIN_DIR/coloctl" --config "$work/pair.conf" --role primary checkpoint >/dev/null ||
    fail "coloctl checkpoint on the primary"

# 5. The primary dies: its instance is not running; the standby keeps its checkpoint (the
# fence command fails, so it does not take over by itself) until it is promoted.
pid=$(cat "$work/run/colod-colod-p.pid")
kill -KILL "$pid"
until_true 30 "the killed primary is gone" process_gone "$pid"
expect 7 colod-p monitor
until_true 30 "the standby sees its primary gone" peer_gone secondary
expect 0 colod-s monitor
# The [primary] host's instance comes back as an empty standby: while its peer's score says the
# peer holds the replica, it refuses to start the guest from nothing (which would overwrite
# that replica).
expect 0 colod-p start
expect_score colod-p "-v 5"
expect 1 colod-p promote
grep -q "will not start the guest from nothing: hostb holds its replica" "$work/agent.log" ||
    fail "the refused promote does not name the peer with the replica"
expect 0 colod-p monitor
expect 0 colod-s promote
expect 8 colod-s monitor
expect_score colod-s "-v 1000"
[ "$(console secondary 'GET ocf')" = survived ] || fail "the guest on the secondary lost the key set before the takeover"
say "the taken-over guest still holds the key"

# 6. The [primary] host's standby is protected by the active side.
until_true 120 "the [primary] host's standby holds a checkpoint" in_state primary standby seq
expect 0 colod-p monitor
expect_score colod-p "-v 100"

# 7. Demote the active side: its guest stops there (no handover) and it is a standby again;
# the other standby keeps the checkpoint and is promoted back.
expect 0 colod-s demote
expect 0 colod-s monitor
expect 0 colod-s demote
until_true 30 "the [primary] host's standby sees its primary gone" peer_gone primary
expect 0 colod-p monitor
expect 0 colod-p promote
expect 8 colod-p monitor
[ "$(console primary 'GET ocf')" = survived ] || fail "the guest lost the key through demote and promote"
say "the guest promoted back still holds the key"

# 8. The active daemon hangs (SIGSTOP, as a frozen host): monitor fails (1) once status does not
# answer; the standby loses it and keeps its checkpoint; demote kills the hung daemon (it would
# not act on SIGTERM) and the standby is promoted.
until_true 120 "the [secondary] host's standby holds a checkpoint again" in_state secondary standby seq
pid=$(cat "$work/run/colod-colod-p.pid")
kill -STOP "$pid"
export OCF_RESKEY_status_timeout=2
expect 1 colod-p monitor
until_true 30 "the standby sees the frozen primary gone" peer_gone secondary
expect 0 colod-p demote
unset OCF_RESKEY_status_timeout
process_gone "$pid" || fail "the frozen daemon (pid $pid) survived demote"
expect 0 colod-p monitor
expect 0 colod-s promote
expect 8 colod-s monitor
[ "$(console secondary 'GET ocf')" = survived ] || fail "the guest lost the key in the takeover from a frozen primary"
say "the guest taken over from a frozen primary still holds the key"

# 9. Demote, then stop both (twice: stop is idempotent).
expect 0 colod-s demote
expect 0 colod-s monitor
expect 0 colod-p stop
expect 0 colod-p stop
expect 7 colod-p monitor
expect 0 colod-s stop
expect 0 colod-s stop
expect 7 colod-s monitor
for pidfile in "$work"/run/colod-*.pid; do
    [ -f "$pidfile" ] && fail "a pid file is left: $pidfile"
done
if pgrep -f "$work/pair.conf" >/dev/null; then
    fail "a daemon of this test still runs: $(pgrep -af "$work/pair.conf")"
fi
say "PASS"
