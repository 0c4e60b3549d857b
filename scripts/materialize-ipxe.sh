#!/usr/bin/env bash
# materialize-ipxe.sh OUTDIR — copy the iPXE binaries rackboot serves from
# Debian's pinned `ipxe` package into OUTDIR (normally pxe/ipxe/bin/, which is
# git-ignored and embedded by `go build`). Nothing here is committed.
#
#   OUTDIR/undionly.kpxe   BIOS (chains the firmware's UNDI driver)
#   OUTDIR/ipxe.efi        x64 UEFI (all iPXE drivers)
#   OUTDIR/snponly.efi     x64 UEFI (the firmware's SNP driver only)
#   OUTDIR/SOURCE          package, version, .deb sha256, sha256 of each file
#
# Debian 12 ships no arm64 iPXE (the `ipxe` package is x86 only; `ipxe-qemu`
# holds NIC option ROMs, not an arm64 ipxe.efi), so ipxe-arm64.efi is absent.
#
# Source, in order: the installed package when its version is the pinned one
# (each file checked against dpkg's md5sums), else `apt-get download` of the
# pinned version, its sha256 checked against apt's record, and `dpkg-deb -x`.
#
# Environment: IPXE_VERSION overrides the pin.
set -euo pipefail
# shellcheck source=lib/materialize.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/materialize.sh"

PIN_VERSION=1.0.0+git-20190125.36a4c85-5.1
FILES=(undionly.kpxe ipxe.efi snponly.efi)
SRC_DIR=usr/lib/ipxe

die() { echo "materialize-ipxe: $*" >&2; exit 1; }

# resolve ROOT PATH: PATH (relative to ROOT) with one level of symlink
# followed inside ROOT (Debian ships /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi).
resolve() {
	local root=$1 path=$2 target
	if [[ -L $root/$path ]]; then
		target=$(readlink "$root/$path")
		if [[ $target == /* ]]; then
			path=${target#/}
		else
			path=$(dirname "$path")/$target
		fi
	fi
	echo "$path"
}

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUT=$1
for tool in apt-get apt-cache dpkg-query dpkg-deb sha256sum md5sum; do
	command -v "$tool" >/dev/null || die "missing $tool (Debian: apt-get install apt dpkg coreutils)"
done
VERSION=${IPXE_VERSION:-$PIN_VERSION}

# apt's record of the .deb: the sha256 we trust.
DEB_SHA=$(apt-cache show "ipxe=$VERSION" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')
[[ -n $DEB_SHA ]] || die "apt knows no ipxe=$VERSION (run apt-get update; is bookworm/main in sources.list?)"

TMP=$(mktemp -d)
chmod 0755 "$TMP" # apt-get download runs as _apt and must write here
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/out"

installed=$(dpkg-query -W -f='${Status} ${Version}' ipxe 2>/dev/null || true)
if [[ $installed == "install ok installed $VERSION" ]]; then
	FROM="installed package (files checked against /var/lib/dpkg/info/ipxe.md5sums)"
	for f in "${FILES[@]}"; do
		path=$(resolve / "$SRC_DIR/$f")
		want=$(awk -v p="$path" '$2 == p {print $1}' /var/lib/dpkg/info/ipxe.md5sums)
		[[ -n $want ]] || die "dpkg has no md5sum for /$path (/$SRC_DIR/$f)"
		got=$(md5sum "/$path" | awk '{print $1}')
		[[ $got == "$want" ]] || die "/$path was modified after install (md5 $got, dpkg says $want): apt-get install --reinstall ipxe"
		cp "/$path" "$TMP/out/$f"
	done
else
	FROM="apt-get download ipxe=$VERSION"
	(cd "$TMP" && apt-get download -q "ipxe=$VERSION" >/dev/null) || die "apt-get download ipxe=$VERSION failed"
	deb=$(ls "$TMP"/ipxe_*.deb)
	got=$(sha256sum "$deb" | awk '{print $1}')
	[[ $got == "$DEB_SHA" ]] || die "$deb: sha256 $got, apt's record says $DEB_SHA: refusing it"
	dpkg-deb -x "$deb" "$TMP/x"
	for f in "${FILES[@]}"; do
		path=$(resolve "$TMP/x" "$SRC_DIR/$f")
		[[ -f $TMP/x/$path ]] || die "ipxe=$VERSION has no /$SRC_DIR/$f"
		cp "$TMP/x/$path" "$TMP/out/$f"
	done
fi

{
	echo "package: ipxe"
	echo "version: $VERSION"
	echo "deb-sha256: $DEB_SHA"
	echo "from: $FROM"
	for f in "${FILES[@]}"; do
		echo "file: $f $(sha256sum "$TMP/out/$f" | awk '{print $1}')"
	done
} >"$TMP/out/SOURCE"

publish "$OUT" "$TMP/out" "${FILES[@]}"
echo "materialize-ipxe: ${FILES[*]} from ipxe $VERSION ($FROM) in $OUT"
