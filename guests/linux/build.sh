#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Builds the Linux test guest: Debian's own kernel (the version behind linux-image-amd64) and an
# initramfs that runs kvstored on ttyS0. Everything comes from Debian packages through apt; the
# kernel package is downloaded and extracted, never installed.
#
#   guests/linux/build.sh OUTDIR KVSTORED
#
# Writes OUTDIR/vmlinuz (the bzImage), OUTDIR/initrd.cpio.gz (newc cpio, gzip), OUTDIR/modules.txt
# (the modules /init loads, in order) and OUTDIR/stamp. Does nothing when the stamp says the
# outputs were made from the same kernel, this script, guests/linux/init and KVSTORED.
#
# Environment: COLOD_DEB_CACHE, the folder for downloaded .debs (default: build/hostkvm/debs
# of this checkout when it exists, which tests/hostkvm/nested.sh fills with the same package,
# else OUTDIR/debs).
#
# Needs apt-get, apt-cache, dpkg-deb, depmod/modprobe (kmod), cpio and gzip; installs
# busybox-static, cpio and kmod if they are missing (as root). Exits 1 with a message when
# something is missing.
set -euo pipefail

say() { echo "linux-guest: $*"; }
die() { echo "linux-guest: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: build.sh OUTDIR KVSTORED"
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
mkdir -p "$1" || die "cannot create $1"
out=$(cd "$1" && pwd)
if [ ! -f "$2" ] || [ ! -x "$2" ]; then
    die "kvstored not found or not executable: $2"
fi
kvstored=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")

# What the initramfs loads, by the names modprobe knows; their dependencies come along.
modules="virtio_mmio virtio_pci virtio_rng virtio_net virtio_blk ext4"

# The packages it needs, installed when missing (as root). busybox-static, not busybox: the
# initramfs has no C library for a dynamic one (the two packages both own /bin/busybox, so the
# package is what is checked).
need=""
for p in busybox-static cpio kmod; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages:$need (apt-get install$need, as root)"
    say "installing$need"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -qq --no-install-recommends $need >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null; } ||
        die "apt-get install$need failed"
fi
for tool in apt-cache apt-get dpkg-deb dpkg-query depmod modprobe cpio gzip sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing (packages: apt, dpkg, kmod, cpio, gzip, coreutils)"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing although busybox-static is installed"

# --- the kernel version, as tests/hostkvm/nested.sh resolves it ------------------------------
kernel_version() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { sub("linux-image-", "", $2); print $2; exit }'
}
kv=$(kernel_version)
if [ -z "$kv" ] && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    kv=$(kernel_version)
fi
[ -n "$kv" ] || die "cannot resolve the kernel version behind linux-image-amd64 (apt-cache depends; apt-get update?)"

# --- up to date? ------------------------------------------------------------------------------
stamp="kernel $kv
$(sha256sum "$here/build.sh" "$here/init" "$kvstored" | awk '{ print $1 }')"
if [ -f "$out/stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.cpio.gz" ] &&
    [ "$(cat "$out/stamp")" = "$stamp" ]; then
    say "up to date in $out (kernel $kv)"
    exit 0
fi

# --- the kernel package -----------------------------------------------------------------------
if [ -n "${COLOD_DEB_CACHE:-}" ]; then
    debs=$COLOD_DEB_CACHE
elif [ -d "$top/build/hostkvm/debs" ]; then
    debs=$top/build/hostkvm/debs
else
    debs=$out/debs
fi
mkdir -p "$debs" || die "cannot create the package cache $debs"
deb() { find "$debs" -maxdepth 1 -name "linux-image-${kv}_*.deb" | LC_ALL=C sort | tail -n 1; }
fetched=cached
if [ -z "$(deb)" ]; then
    (cd "$debs" && apt-get download "linux-image-$kv" >/dev/null 2>&1) ||
        die "apt-get download linux-image-$kv failed (into $debs)"
    fetched=downloaded
fi
package=$(deb)
[ -n "$package" ] || die "linux-image-$kv is not in $debs after apt-get download"

work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$package" "$work/kroot" || die "dpkg-deb -x $package failed" # extracted, never installed
[ -f "$work/kroot/boot/vmlinuz-$kv" ] || die "boot/vmlinuz-$kv is not in $package"
[ -d "$work/kroot/lib/modules/$kv" ] || die "lib/modules/$kv is not in $package"
# The package ships no modules.dep (its postinst makes it); modprobe needs one.
depmod -b "$work/kroot" "$kv" || die "depmod failed on the extracted modules"

# --- the initramfs ----------------------------------------------------------------------------
root=$work/initrd
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$root/bin/busybox"
cp "$kvstored" "$root/bin/kvstored"
cp "$here/init" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox" "$root/bin/kvstored"
# /dev/console for the kernel to open before /init mounts devtmpfs (the kernel's built-in
# initramfs has one too; this one does not rely on it). Only root can make the node.
if [ "$(id -u)" -eq 0 ]; then
    mknod -m 0600 "$root/dev/console" c 5 1
fi

# Dependencies in load order (modprobe --show-depends lists them before the module itself,
# soft dependencies included); modules built into the kernel show as "builtin" and are skipped.
# Compressed modules are unpacked: busybox's insmod loads plain .ko files.
: > "$root/lib/modules/order"
for m in $modules; do
    modprobe -d "$work/kroot" -S "$kv" --show-depends "$m" ||
        die "modprobe --show-depends $m failed: no such module in linux-image-$kv"
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$work/paths"
while read -r ko; do
    name=$(basename "$ko")
    case $name in
    *.ko) cp "$ko" "$root/lib/modules/$name" ;;
    *.ko.xz) name=${name%.xz}; xz -dc "$ko" > "$root/lib/modules/$name" ;;
    *.ko.zst) name=${name%.zst}; zstd -qdc "$ko" > "$root/lib/modules/$name" ;;
    *.ko.gz) name=${name%.gz}; gzip -dc "$ko" > "$root/lib/modules/$name" ;;
    *) die "unexpected module file $ko" ;;
    esac || die "cannot unpack $ko"
    echo "${name%.ko}" >> "$root/lib/modules/order"
done < "$work/paths"
count=$(wc -l < "$root/lib/modules/order")
[ "$count" -gt 0 ] || die "no module to load was found for: $modules"

# newc, owned by root, in a stable order, so that the same inputs give the same archive.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
    gzip -9n > "$work/initrd.cpio.gz" || die "cpio/gzip failed"

# The bzImage boot protocol header ("HdrS" at 0x202): what colod's loader reads.
magic=$(dd if="$work/kroot/boot/vmlinuz-$kv" bs=1 skip=514 count=4 2>/dev/null)
[ "$magic" = HdrS ] || die "boot/vmlinuz-$kv is not a bzImage"

mv "$work/kroot/boot/vmlinuz-$kv" "$out/vmlinuz"
mv "$work/initrd.cpio.gz" "$out/initrd.cpio.gz"
cp "$root/lib/modules/order" "$out/modules.txt"
echo "$stamp" > "$out/stamp"
say "kernel $kv ($fetched, $package): $out/vmlinuz $(($(stat -c %s "$out/vmlinuz") / 1024)) KiB"
say "initramfs: $out/initrd.cpio.gz $(($(stat -c %s "$out/initrd.cpio.gz") / 1024)) KiB, busybox, kvstored and $count modules"
