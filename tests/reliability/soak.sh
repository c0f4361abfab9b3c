#!/bin/sh
# The reliability soak: the same binaries as `ctest -L reliability`, with far more injections,
# and one merged table at the end (docs/reliability.md).
#
#   tests/reliability/soak.sh            # about 15 minutes on 2 cores: 140 kill points, ...
#   KILLS=500 tests/reliability/soak.sh  # longer
#
# Knobs (environment): KILLS (kill points, default 140: ten of each kind), STALLS (default 24:
# every stall point twice), FLIPS, REPLAYS (corrupted-stream rounds, default 10 and 5),
# LINK_SECONDS (per link profile, default 30), FLOOD (connections, default 1000), SEED
# (repeat a run), BUILD_DIR (default build/, configured with -DCOLOD_FAULT_POINTS=ON, as
# tests/run.sh does). Needs root (namespaces, nft, tc). Exits non-zero if any test failed or
# any row shows a violation.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$top/build}
bin=$build/tests/reliability
for t in faults guests peers link; do
  if [ ! -x "$bin/reliability_$t" ]; then
    echo "soak: $bin/reliability_$t is missing: build first (tests/run.sh, or ninja -C $build)" >&2
    exit 2
  fi
done

report=$(mktemp /tmp/colod-soak.XXXXXX)
trap 'rm -f "$report"' EXIT
export COLOD_RELIABILITY_REPORT="$report"
export COLOD_RELIABILITY_KILLS="${KILLS:-140}"
export COLOD_RELIABILITY_STALLS="${STALLS:-24}"
export COLOD_RELIABILITY_FLIPS="${FLIPS:-10}"
export COLOD_RELIABILITY_REPLAYS="${REPLAYS:-5}"
export COLOD_RELIABILITY_LINK_SECONDS="${LINK_SECONDS:-30}"
export COLOD_RELIABILITY_FLOOD="${FLOOD:-1000}"
[ -n "${SEED:-}" ] && export COLOD_RELIABILITY_SEED="$SEED"

started=$(date +%s)
failed=0
for t in faults guests peers link; do
  echo "soak: reliability_$t"
  "$bin/reliability_$t" || failed=1
done
elapsed=$(( $(date +%s) - started ))

# Merge the rows (fault, injected, failovers, acked, violations, max RSS KiB, note).
rows=$(awk -F '\t' '
  { inj[$1] += $2; fo[$1] += $3; ack[$1] += $4; vio[$1] += $5; if ($6 > rss[$1]) rss[$1] = $6 }
  END { for (k in inj) printf "%s\t%d\t%d\t%d\t%d\t%d\n", k, inj[k], fo[k], ack[k], vio[k], rss[k] }' "$report" | sort)
echo
echo "reliability soak: $elapsed s"
echo "| fault | injected | failovers | acked INCRs checked | violations | max daemon RSS |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "$rows" | awk -F '\t' '
  NF >= 6 {
    printf "| %s | %d | %d | %d | %d | %.1f MiB |\n", $1, $2, $3, $4, $5, $6 / 1024
    ti += $2; tf += $3; ta += $4; tv += $5; if ($6 > tr) tr = $6
  }
  END { printf "| **total** | %d | %d | %d | %d | %.1f MiB |\n", ti, tf, ta, tv, tr / 1024; exit tv > 0 }' || failed=1
exit $failed
