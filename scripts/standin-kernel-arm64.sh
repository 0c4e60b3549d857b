#!/usr/bin/env bash
# standin-kernel-arm64.sh OUTDIR — the arm64 stand-in kernel: Debian bookworm's
# linux-image-6.1.0-N-arm64 and its modules, materialized by
# scripts/standin-kernel.sh (same layout, same SHA-256 check against apt's
# index) into OUTDIR (git-ignored).
#
# The machine's dpkg configuration is not touched: apt reads a private arm64
# source list and lists directory (APT_CONFIG), updated here, and only
# downloads the package.
#
# Environment: STANDIN_KERNEL_ARM64_PKG / STANDIN_KERNEL_ARM64_VERSION override the pin.
set -euo pipefail

# The same Debian kernel release as the amd64 pin in scripts/standin-kernel.sh.
PIN_PKG=linux-image-6.1.0-56-arm64
PIN_VERSION=6.1.192-2

die() { echo "standin-kernel-arm64: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)

# Debian's mirror as this machine's apt has it.
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[[ -n $MIRROR ]] || MIRROR=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
[[ -n $MIRROR ]] || die "cannot find Debian's mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
SECURITY=${MIRROR%/debian}/debian-security

APTDIR=${XDG_CACHE_HOME:-$HOME/.cache}/rackboot/apt-arm64
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
chmod 0755 "$APTDIR" "$APTDIR/lists" "$APTDIR/cache"
cat >"$APTDIR/sources.list" <<SRC
deb [arch=arm64] $MIRROR bookworm main
deb [arch=arm64] $MIRROR bookworm-updates main
deb [arch=arm64] $SECURITY bookworm-security main
SRC
cat >"$APTDIR/apt.conf" <<CONF
Dir::Etc::SourceList "$APTDIR/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$APTDIR/lists";
Dir::Cache "$APTDIR/cache";
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Sandbox::User "root";
CONF
export APT_CONFIG=$APTDIR/apt.conf
apt-get -q update >/dev/null || die "apt-get update of the private arm64 lists in $APTDIR failed"

STANDIN_KERNEL_PKG=${STANDIN_KERNEL_ARM64_PKG:-$PIN_PKG} \
	STANDIN_KERNEL_VERSION=${STANDIN_KERNEL_ARM64_VERSION:-$PIN_VERSION} \
	"$HERE/standin-kernel.sh" "$OUT"
