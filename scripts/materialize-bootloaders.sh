#!/usr/bin/env bash
# materialize-bootloaders.sh OUTDIR — copy the boot loaders rackboot puts on
# its install images from Debian's pinned packages into OUTDIR (normally
# imager/bootloaders/bin/, which is git-ignored and embedded by `go build`).
# Nothing here is committed.
#
#   OUTDIR/isolinux.bin         BIOS El Torito loader      (package isolinux)
#   OUTDIR/ldlinux.c32          isolinux's core module     (package syslinux-common)
#   OUTDIR/systemd-bootx64.efi  UEFI boot manager (x86-64) (package systemd-boot-efi)
#   OUTDIR/SOURCE               package, version, .deb sha256, sha256 of each file
#
# Source, per package: the installed package when its version is the pinned
# one (each file checked against dpkg's md5sums), else `apt-get download` of
# the pinned version, its sha256 checked against apt's record, and
# `dpkg-deb -x`.
#
# Environment: ISOLINUX_VERSION, SYSLINUX_COMMON_VERSION, SYSTEMD_BOOT_EFI_VERSION
# override the pins (Debian replaces point-release versions of systemd-boot-efi).
set -euo pipefail
# shellcheck source=lib/materialize.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/materialize.sh"

declare -A PIN=(
	[isolinux]=${ISOLINUX_VERSION:-3:6.04~git20190206.bf6db5b4+dfsg1-3}
	[syslinux-common]=${SYSLINUX_COMMON_VERSION:-3:6.04~git20190206.bf6db5b4+dfsg1-3}
	[systemd-boot-efi]=${SYSTEMD_BOOT_EFI_VERSION:-252.39-1~deb12u2}
)
# package → "path-in-package:output-name"
declare -A FILE=(
	[isolinux]=usr/lib/ISOLINUX/isolinux.bin:isolinux.bin
	[syslinux-common]=usr/lib/syslinux/modules/bios/ldlinux.c32:ldlinux.c32
	[systemd-boot-efi]=usr/lib/systemd/boot/efi/systemd-bootx64.efi:systemd-bootx64.efi
)
ORDER=(isolinux syslinux-common systemd-boot-efi)

die() { echo "materialize-bootloaders: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUT=$1
for tool in apt-get apt-cache dpkg-query dpkg-deb sha256sum md5sum; do
	command -v "$tool" >/dev/null || die "missing $tool (Debian: apt-get install apt dpkg coreutils)"
done

TMP=$(mktemp -d)
chmod 0755 "$TMP" # apt-get download runs as _apt and must write here
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/out"
: >"$TMP/SOURCE"
echo "# rackboot boot loaders, materialized by scripts/materialize-bootloaders.sh" >>"$TMP/SOURCE"

for pkg in "${ORDER[@]}"; do
	version=${PIN[$pkg]}
	src=${FILE[$pkg]%%:*}
	name=${FILE[$pkg]##*:}
	deb_sha=$(apt-cache show "$pkg=$version" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')
	[[ -n $deb_sha ]] || die "apt knows no $pkg=$version (run apt-get update, or set the version with the environment variable named in this script)"
	installed=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
	if [[ $installed == "install ok installed $version" ]]; then
		from="installed package (checked against dpkg's md5sums)"
		sums=
		for f in /var/lib/dpkg/info/"$pkg".md5sums /var/lib/dpkg/info/"$pkg":*.md5sums; do
			[[ -f $f ]] && { sums=$f; break; }
		done
		[[ -n $sums ]] || die "dpkg has no md5sums for $pkg"
		want=$(awk -v p="$src" '$2 == p {print $1}' "$sums")
		[[ -n $want ]] || die "dpkg has no md5sum for /$src in $sums"
		got=$(md5sum "/$src" | awk '{print $1}')
		[[ $got == "$want" ]] || die "/$src was modified after install (md5 $got, dpkg says $want): apt-get install --reinstall $pkg"
		cp "/$src" "$TMP/out/$name"
	else
		from="apt-get download $pkg=$version"
		mkdir -p "$TMP/dl-$pkg"
		chmod 0755 "$TMP/dl-$pkg"
		(cd "$TMP/dl-$pkg" && apt-get download -q "$pkg=$version" >/dev/null) || die "apt-get download $pkg=$version failed"
		deb=$(ls "$TMP/dl-$pkg"/*.deb)
		got=$(sha256sum "$deb" | awk '{print $1}')
		[[ $got == "$deb_sha" ]] || die "$deb: sha256 $got, apt's record says $deb_sha: refusing it"
		dpkg-deb -x "$deb" "$TMP/x-$pkg"
		[[ -f $TMP/x-$pkg/$src ]] || die "$pkg=$version has no /$src"
		cp "$TMP/x-$pkg/$src" "$TMP/out/$name"
	fi
	{
		echo "package: $pkg"
		echo "version: $version"
		echo "deb-sha256: $deb_sha"
		echo "from: $from"
		echo "file: $name /$src $(sha256sum "$TMP/out/$name" | awk '{print $1}')"
	} >>"$TMP/SOURCE"
done
cp "$TMP/SOURCE" "$TMP/out/SOURCE"

publish "$OUT" "$TMP/out" isolinux.bin ldlinux.c32 systemd-bootx64.efi
echo "materialize-bootloaders: isolinux.bin ldlinux.c32 systemd-bootx64.efi in $OUT"
