#!/bin/sh
# Installs everything colod needs to build, test and run, from Debian (bookworm) packages.
# Idempotent and non-interactive; run as root. Does nothing when all packages are present.
set -eu

packages="
  build-essential cmake ninja-build pkg-config git
  libboost-program-options-dev libfmt-dev catch2 libsystemd-dev libsodium-dev libssl-dev
  clang libclang-rt-dev
  iproute2 iputils-ping nftables netcat-openbsd socat python3 tcpdump
  systemd dpkg-dev fakeroot file lintian prometheus resource-agents tmux
"

missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages:$missing (run this script as root to install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "install-deps: installed$missing"
