#!/bin/sh
# An example fence command for a two-host pair: powers off the PEER of the host it runs on,
# through that host's BMC, with fence_ipmilan (Debian package fence-agents). colod-secondary
# runs its fence-command before it takes over, and takes over only if it exits 0.
#
# The same script and config serve both hosts: after a failover the roles swap and the other
# host's secondary must fence the other way. colod passes the peer's replication endpoint in
# COLOD_PEER (and COLOD_VM, COLOD_SEQ, COLOD_REASON), so the script picks the BMC from it.
#
# Install as /etc/colod/fence-peer.sh (mode 0700) on both hosts and set in the config:
#   fence-command = /etc/colod/fence-peer.sh
# The BMC passwords come from /etc/colod/bmc-a.pass and bmc-b.pass: small scripts (mode 0700)
# that print them, as fence_ipmilan's --password-script expects.
set -eu

case "${COLOD_PEER:-}" in
10.0.0.1:*) bmc=10.0.1.1; pass=/etc/colod/bmc-a.pass ;;   # host A
10.0.0.2:*) bmc=10.0.1.2; pass=/etc/colod/bmc-b.pass ;;   # host B
*)
    echo "fence-peer: no BMC known for peer '${COLOD_PEER:-}'" >&2
    exit 1
    ;;
esac

echo "fence-peer: powering off ${COLOD_PEER} through ${bmc} (VM ${COLOD_VM:-?}, checkpoint ${COLOD_SEQ:-?}: ${COLOD_REASON:-?})"
# --action=off returns once the BMC reports the host off: exit 0 means the old primary is gone.
exec /usr/sbin/fence_ipmilan --ip="$bmc" --username=colod --password-script="$pass" --lanplus --action=off
