#!/bin/sh
# Builds the colod .deb with CPack from a build tree configured as a user's plain cmake command
# configures it (no CMAKE_INSTALL_PREFIX: /usr/local), checks it with packaging/check-deb.sh
# (every path under /usr, daemons in /usr/sbin with section-8 man pages, units naming them,
# no lintian error), installs it with its dependencies into a clean Debian bookworm root made by
# debootstrap, and checks the installed package there: the binaries run --version and
# --check-config on the installed examples, the units name installed binaries, the man pages and
# docs are in place, and colod-primary starts its guest from the installed example config and
# stops cleanly on SIGTERM.
#
#   packaging/test-deb.sh [--build-dir DIR] [--cache-dir DIR] [--mirror URL] [--keep-root]
#                         [--skip-unless-enabled]
#
# Needs root (debootstrap, chroot) and the Debian mirror that apt uses on this host (read from
# /etc/apt/sources.list*; --mirror overrides). The first run debootstraps a minimal bookworm
# root into the cache directory (default /var/cache/colod-test-deb, a few minutes); later runs
# copy that pristine root, so every run installs into a clean root. --skip-unless-enabled (used
# by the ctest test packaging_deb_bookworm) exits 77, "skipped", unless COLOD_TEST_DEB=1.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build-deb
cache=/var/cache/colod-test-deb
mirror=""
keep_root=0
skip_unless_enabled=0
while [ $# -gt 0 ]; do
    case $1 in
    --build-dir) build=$2; shift 2 ;;
    --cache-dir) cache=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --keep-root) keep_root=1; shift ;;
    --skip-unless-enabled) skip_unless_enabled=1; shift ;;
    *) echo "usage: $0 [--build-dir DIR] [--cache-dir DIR] [--mirror URL] [--keep-root] [--skip-unless-enabled]" >&2; exit 2 ;;
    esac
done

if [ "$skip_unless_enabled" = 1 ] && [ "${COLOD_TEST_DEB:-}" != 1 ]; then
    echo "test-deb: skipped (set COLOD_TEST_DEB=1 to build the .deb and install it into a bookworm root)"
    exit 77
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb: must run as root (debootstrap and chroot)" >&2
    exit 1
fi

say() { echo "test-deb: $*"; }
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

# The mirror apt uses here: deb822 "URIs:" lines first, then one-line "deb URL bookworm" entries.
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' | head -n 1)
fi
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
             awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
fi
[ -n "$mirror" ] || fail "no Debian mirror found in /etc/apt/sources.list*; pass --mirror URL"

need_packages=""
command -v debootstrap >/dev/null || need_packages="$need_packages debootstrap"
command -v dpkg-shlibdeps >/dev/null || need_packages="$need_packages dpkg-dev"
command -v fakeroot >/dev/null || need_packages="$need_packages fakeroot"
command -v lintian >/dev/null || need_packages="$need_packages lintian"
if [ -n "$need_packages" ]; then
    say "installing$need_packages"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_packages >/dev/null
fi

# 1. The package, from its own build tree (no tests: only what the package holds), configured
# without a prefix: the package installs under /usr whatever the tree's prefix is. (-U drops a
# prefix that an earlier configure of a reused tree cached.)
start=$(date +%s)
say "building the package in $build"
cmake -S "$top" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOLOD_TESTS=OFF \
      -UCMAKE_INSTALL_PREFIX >/dev/null
ninja -C "$build" -j"${JOBS:-2}" >/dev/null
"$top/packaging/check-deb.sh" "$build" "$build/check-deb" || fail "packaging/check-deb.sh failed"
deb=$(ls "$build"/check-deb/package/colod_*.deb)
say "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB) in $(( $(date +%s) - start )) s"

contents=$(dpkg-deb -c "$deb" | awk '{ print $6 }')
for path in ./usr/sbin/colod-primary ./usr/sbin/colod-secondary ./usr/bin/coloctl \
            ./usr/lib/systemd/system/colod-primary@.service ./usr/lib/systemd/system/colod-secondary@.service \
            ./usr/share/man/man8/colod-primary.8.gz ./usr/share/man/man8/colod-secondary.8.gz \
            ./usr/share/man/man1/coloctl.1.gz ./usr/share/doc/colod/operator-guide.md \
            ./usr/share/doc/colod/runbook.md ./usr/share/doc/colod/events.md ./usr/share/doc/colod/config.md \
            ./usr/share/doc/colod/copyright ./usr/share/doc/colod/examples/demo.conf \
            ./usr/share/doc/colod/examples/pair-host-a.conf; do
    echo "$contents" | grep -qx "$path" || fail "the package lacks $path"
done
if echo "$contents" | grep -q '\.key$'; then
    fail "the package holds a key file: $(echo "$contents" | grep '\.key$')"
fi
depends=$(dpkg-deb -f "$deb" Depends)
say "Depends: $depends"
for lib in libfmt libboost-program-options libsodium libssl3 libsystemd; do
    echo "$depends" | grep -q "$lib" || fail "Depends lacks $lib"
done

# 2. A pristine minimal bookworm root, made once.
pristine=$cache/bookworm-minbase
if [ ! -f "$pristine/.colod-complete" ]; then
    say "debootstrapping bookworm (minbase) from $mirror into $pristine"
    rm -rf "$pristine" "$pristine.partial"
    mkdir -p "$cache"
    start=$(date +%s)
    debootstrap --variant=minbase bookworm "$pristine.partial" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -n 20 "$cache/debootstrap.log" >&2; fail "debootstrap failed (log: $cache/debootstrap.log)"; }
    mv "$pristine.partial" "$pristine"
    touch "$pristine/.colod-complete"
    say "debootstrap took $(( $(date +%s) - start )) s"
fi

# 3. A clean copy to install into.
root=$(mktemp -d /var/tmp/colod-deb-root.XXXXXX)
cleanup() {
    for m in "$root/dev" "$root/proc"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    if [ "$keep_root" = 1 ]; then say "root kept in $root"; else rm -rf "$root"; fi
}
trap cleanup EXIT
cp -a "$pristine/." "$root/"
rm -f "$root/.colod-complete"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
cp "$deb" "$root/tmp/colod.deb"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

start=$(date +%s)
say "installing the package and its dependencies into $root"
in_root apt-get update -qq >/dev/null
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /tmp/colod.deb \
    >"$root/tmp/install.log" 2>&1 || { tail -n 30 "$root/tmp/install.log" >&2; fail "apt-get install failed"; }
say "installed in $(( $(date +%s) - start )) s"

# 4. The installed package.
in_root dpkg-query -W -f='${Status}\n' colod | grep -q "install ok installed" || fail "colod is not installed"
for program in colod-primary colod-secondary coloctl; do
    version=$(in_root "$program" --version) || fail "$program --version failed"
    echo "$version" | grep -Eq "^$program [0-9]+\.[0-9]+\.[0-9]+" || fail "$program --version said '$version'"
    say "$version"
done
examples=/usr/share/doc/colod/examples
for example in demo.conf pair-host-a.conf; do
    for program in colod-primary colod-secondary; do
        out=$(in_root "$program" --config "$examples/$example" --check-config) ||
            fail "$program --check-config $examples/$example: $out"
        say "$program --check-config $example: $out"
    done
done
# A broken config is refused with status 2, naming the key.
printf '[vm]\nmemory = 12\n' > "$root/tmp/bad.conf"
set +e
out=$(in_root colod-primary --config /tmp/bad.conf --check-config 2>&1)
status=$?
set -e
[ "$status" = 2 ] || fail "a bad config gave status $status, not 2: $out"
echo "$out" | grep -q "vm.memory" || fail "the bad config's report does not name vm.memory: $out"

for unit in colod-primary@.service colod-secondary@.service; do
    file=$root/usr/lib/systemd/system/$unit
    exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$file")
    [ -x "$root$exec_path" ] || fail "$unit: ExecStart names $exec_path, which is not installed"
done
[ "$(stat -c %a "$root/etc/colod")" = 750 ] || fail "postinst did not create /etc/colod with mode 0750"
in_root sh -c 'zcat /usr/share/man/man8/colod-primary.8.gz | grep -q "^\.SH EXIT STATUS"' ||
    fail "the installed colod-primary(8) is not readable"

# The installed daemon runs its guest from the installed example, as an operator would set it up.
cp "$root$examples/demo.conf" "$root/etc/colod/demo.conf"
head -c 32 /dev/urandom > "$root/etc/colod/demo.key"
chmod 600 "$root/etc/colod/demo.key"
log=$root/tmp/primary.log
# chroot and env exec, so $! is the daemon itself.
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    colod-primary --config /etc/colod/demo.conf --standalone >"$log" 2>&1 &
pid=$!
deadline=$(( $(date +%s) + 60 ))
until grep -q '\[started\]' "$log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "colod-primary exited before it started"; }
    [ "$(date +%s)" -lt "$deadline" ] || { kill -KILL "$pid"; cat "$log" >&2; fail "colod-primary did not start in 60 s"; }
    sleep 0.2
done
kill -TERM "$pid"
set +e
wait "$pid"
status=$?
set -e
[ "$status" = 0 ] || { cat "$log" >&2; fail "colod-primary exited $status on SIGTERM, not 0"; }
grep -q '\[stopped\]' "$log" || fail "no stopped record: $(cat "$log")"
say "installed colod-primary ran the guest and stopped cleanly"
say "PASS"
