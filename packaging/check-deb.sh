#!/bin/sh
# Packages a built colod tree with CPack and checks the .deb as a Debian user expects it, whatever
# CMAKE_INSTALL_PREFIX the tree was configured with (/usr/local by default):
#   - every path is under /usr or /etc (or /lib/systemd/system), nothing under /usr/local;
#   - the daemons are in /usr/sbin with man pages in section 8, coloctl in /usr/bin with its page
#     in section 1;
#   - the units' ExecStart= names the packaged daemons, Documentation= the packaged docs;
#   - the changelog's newest entry is the package's version;
#   - lintian reports no error (its warnings are shown; skipped, saying so, without lintian);
# and that `cmake --install --prefix DIR` from the same tree still installs under DIR, with
# units that name DIR/sbin.
#
#   packaging/check-deb.sh BUILD_DIR [WORK_DIR]
#
# BUILD_DIR must be built. WORK_DIR (default: a temporary directory, removed afterwards) gets
# the package and CPack's staging tree; the .deb is left there. Needs no root. Exits 77,
# "skipped", without dpkg-deb or dpkg-shlibdeps (dpkg-dev), which CPack needs.
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 BUILD_DIR [WORK_DIR]" >&2
    exit 2
fi
build=$(cd "$1" && pwd)
say() { echo "check-deb: $*"; }
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }

for tool in dpkg-deb dpkg-shlibdeps cpack; do
    command -v "$tool" >/dev/null || { say "skipped: $tool is not installed (packaging/install-deps.sh)"; exit 77; }
done
[ -f "$build/CPackConfig.cmake" ] || fail "$build has no CPackConfig.cmake: not a configured colod build tree"

if [ $# -eq 2 ]; then
    work=$2
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    keep_work=1
else
    work=$(mktemp -d /tmp/colod-check-deb.XXXXXX)
    keep_work=0
fi
# A temporary WORK_DIR is removed after a pass and kept, for its logs, after a failure.
cleanup() {
    status=$?
    if [ "$keep_work" = 0 ]; then
        if [ "$status" = 0 ]; then rm -rf "$work"; else echo "check-deb: logs kept in $work" >&2; fi
    fi
}
trap cleanup EXIT
rm -rf "$work/package" "$work/root" "$work/prefix"

prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:[A-Z]*=//p' "$build/CMakeCache.txt")
say "packaging $build (configured with CMAKE_INSTALL_PREFIX=$prefix)"
(cd "$work" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work/package" >"$work/cpack.log" 2>&1) ||
    { tail -n 20 "$work/cpack.log" >&2; fail "cpack failed (log: $work/cpack.log)"; }
deb=$(ls "$work"/package/colod_*.deb)
say "built $deb"

# 1. Paths.
listing=$(dpkg-deb -c "$deb") || fail "dpkg-deb -c $deb failed"
contents=$(echo "$listing" | awk '{ print $6 }')
outside=$(echo "$contents" | grep -Ev '^\./$|^\./(usr|etc)/|^\./lib/(systemd/(system/.*)?)?$' || true)
[ -z "$outside" ] || fail "the package installs outside /usr and /etc: $outside"
local_paths=$(echo "$contents" | grep '^\./usr/local' || true)
[ -z "$local_paths" ] || fail "the package installs under /usr/local: $local_paths"
for path in ./usr/sbin/colod-primary ./usr/sbin/colod-secondary ./usr/bin/coloctl \
            ./usr/share/man/man8/colod-primary.8.gz ./usr/share/man/man8/colod-secondary.8.gz \
            ./usr/share/man/man1/coloctl.1.gz ./usr/lib/ocf/resource.d/colod/colod \
            ./usr/share/doc/colod/copyright ./usr/share/doc/colod/changelog.gz; do
    echo "$contents" | grep -qx "$path" || fail "the package lacks $path"
done
for path in ./usr/bin/colod-primary ./usr/bin/colod-secondary \
            ./usr/share/man/man1/colod-primary.1.gz ./usr/share/man/man1/colod-secondary.1.gz; do
    if echo "$contents" | grep -qx "$path"; then fail "the package still holds $path"; fi
done
units=$(echo "$contents" | grep -E '/systemd/system/colod-(primary|secondary)@\.service$' || true)
[ "$(echo "$units" | grep -c .)" = 2 ] || fail "the package does not hold both units: $units"

# 2. What the files say.
mkdir -p "$work/root"
dpkg-deb -x "$deb" "$work/root" || fail "dpkg-deb -x $deb failed"
for unit in $units; do
    file=$work/root/${unit#./}
    exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$file")
    case $exec_path in
    /usr/sbin/colod-primary | /usr/sbin/colod-secondary) ;;
    *) fail "$unit: ExecStart names $exec_path, not a daemon in /usr/sbin" ;;
    esac
    [ -x "$work/root$exec_path" ] || fail "$unit: ExecStart names $exec_path, which the package lacks"
    # Documentation= is a list of words.
    # shellcheck disable=SC2013
    for doc in $(sed -n 's/^Documentation=//p' "$file"); do
        case $doc in
        file:*) [ -f "$work/root${doc#file:}" ] || fail "$unit: Documentation names ${doc#file:}, which the package lacks" ;;
        man:colod-primary\(8\) | man:colod-secondary\(8\) | man:coloctl\(1\)) ;;
        man:*) fail "$unit: Documentation names $doc, not a page in the package" ;;
        esac
    done
done
for page in man8/colod-primary.8 man8/colod-secondary.8 man1/coloctl.1; do
    name=$(basename "$page")
    title=$(echo "${name%.*}" | tr '[:lower:]' '[:upper:]')
    zcat "$work/root/usr/share/man/$page.gz" | grep -q "^\.TH $title ${name##*.} " ||
        fail "$page.gz does not say it is $title in section ${name##*.}"
done
# The OCF resource agent: executable, and Pacemaker finds it as ocf:colod:colod.
agent_mode=$(echo "$listing" | awk '$6 == "./usr/lib/ocf/resource.d/colod/colod" { print $1 }')
[ "$agent_mode" = "-rwxr-xr-x" ] || fail "the OCF resource agent has mode $agent_mode, not -rwxr-xr-x"
"$work/root/usr/lib/ocf/resource.d/colod/colod" meta-data | grep -q '<resource-agent name="colod"' ||
    fail "the packaged OCF resource agent does not print its meta-data"
version=$(dpkg-deb -f "$deb" Version)
changelog_version=$(zcat "$work/root/usr/share/doc/colod/changelog.gz" | sed -n '1s/^colod (\([^)]*\)).*/\1/p')
[ "$changelog_version" = "$version" ] ||
    fail "the changelog's newest entry is '$changelog_version', the package is $version (packaging/debian/changelog)"
say "paths: daemons in /usr/sbin, coloctl in /usr/bin, man pages in sections 8 and 1, units name /usr/sbin, OCF agent in /usr/lib/ocf/resource.d/colod"

# 3. lintian.
if command -v lintian >/dev/null; then
    # lintian says "running with root privileges is not recommended!" on stderr as root.
    set +e
    lintian --info --display-info --pedantic "$deb" >"$work/lintian.txt" 2>"$work/lintian.err"
    status=$?
    set -e
    tags=$(grep -E '^[EWIPX]: ' "$work/lintian.txt" || true)
    if [ -n "$tags" ]; then
        say "lintian:"
        echo "$tags" | sed 's/^/  /'
    fi
    if echo "$tags" | grep -q '^E: '; then
        fail "lintian reports errors (details: $work/lintian.txt)"
    fi
    [ "$status" = 0 ] || { cat "$work/lintian.err" >&2; fail "lintian exited $status"; }
    say "lintian: no errors, $(echo "$tags" | grep -c '^W: ') warnings"
else
    say "lintian is not installed: the lintian check is skipped (apt-get install lintian)"
fi

# 4. `cmake --install` still honours a prefix.
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log" 2>&1 ||
    { tail -n 20 "$work/install.log" >&2; fail "cmake --install --prefix $work/prefix failed"; }
for program in colod-primary colod-secondary; do
    [ -x "$work/prefix/sbin/$program" ] || fail "cmake --install --prefix did not put $program in $work/prefix/sbin"
    unit=$(find "$work/prefix" -name "$program@.service")
    [ -n "$unit" ] || fail "cmake --install --prefix did not install $program@.service under $work/prefix"
    grep -qx "ExecStart=$work/prefix/sbin/$program --config /etc/colod/%i.conf" "$unit" ||
        fail "$unit does not name $work/prefix/sbin/$program: $(grep ^ExecStart= "$unit")"
done
[ -x "$work/prefix/bin/coloctl" ] || fail "cmake --install --prefix did not put coloctl in $work/prefix/bin"
[ -x "$work/prefix/lib/ocf/resource.d/colod/colod" ] ||
    fail "cmake --install --prefix did not put the OCF resource agent in $work/prefix/lib/ocf/resource.d/colod"
rm -rf "$work/prefix" "$work/root"
say "cmake --install --prefix DIR installs under DIR, with units that name DIR/sbin"
say "PASS"
