#!/usr/bin/env bash
# materialize-ipxe.sh OUTDIR — copy the iPXE binaries rackboot serves from
# Debian trixie's `ipxe` package, pinned by version and .deb SHA-256, into
# OUTDIR (normally pxe/ipxe/bin/, which is git-ignored and embedded by
# `go build`). Nothing here is committed.
#
#   OUTDIR/undionly.kpxe   x86 BIOS (chains the firmware's UNDI driver)
#   OUTDIR/ipxe.efi        x64 UEFI, iPXE's own NIC drivers (Debian: ipxe-amd64.efi)
#   OUTDIR/snponly.efi     x64 UEFI, the firmware's SNP driver only
#   OUTDIR/ipxe-arm64.efi  arm64 UEFI, iPXE's own NIC drivers
#   OUTDIR/SOURCE          package, version, .deb sha256, sha256 of each file
#
# Why trixie: Debian 12's ipxe is a January 2019 snapshot with no arm64
# build. Trixie's is 2025-05 and ships ipxe-arm64.efi. It is only downloaded
# and unpacked (never installed), so Debian 12 hosts keep their own package.
#
# Steps (each mismatch stops the script with both sums; OUTDIR is then left
# as it was):
#   1. OUTDIR/SOURCE names the pinned version and .deb sha256 and every file
#      has the sha256 SOURCE records: nothing to do.
#   2. The .deb is taken from the cache (IPXE_CACHE) when its sha256 is the pin.
#   3. Else `apt-get update` with a private source list for trixie main
#      (nothing in /etc/apt changes): apt checks the InRelease signature with
#      debian-archive-keyring, and the signed index's SHA256 for the version
#      must be the pin; `apt-get download` (apt checks the index hash), the
#      .deb's sha256 checked against the pin once more, kept in the cache.
#   4. `dpkg-deb -x`, copy the files (symlinks followed inside the package).
#
# Environment: IPXE_VERSION and IPXE_SHA256 override the pin (set both);
# IPXE_CACHE (default .cache/ipxe in the source tree) keeps the verified .deb; DEBIAN_MIRROR (default: the first URIs: of
# /etc/apt/sources.list.d/debian.sources, else http://deb.debian.org/debian).
set -euo pipefail
# shellcheck source=lib/materialize.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/materialize.sh"

PIN_VERSION=1.21.1+git20250501.dad20602+dfsg-1
PIN_SHA256=eeaca79dbde0fb86c102bf1d362c6f6a67ed0ddab38b3dd12e1b332339f5dd99
SUITE=trixie
# output name → path inside the .deb
declare -A SRC=(
	[undionly.kpxe]=usr/lib/ipxe/undionly.kpxe
	[ipxe.efi]=usr/lib/ipxe/ipxe.efi
	[snponly.efi]=usr/lib/ipxe/snponly.efi
	[ipxe-arm64.efi]=usr/lib/ipxe/ipxe-arm64.efi
)
FILES=(undionly.kpxe ipxe.efi snponly.efi ipxe-arm64.efi)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

die() { echo "materialize-ipxe: $*" >&2; exit 1; }

# resolve ROOT PATH: PATH (relative to ROOT) with one level of symlink
# followed inside ROOT (trixie ships usr/lib/ipxe/ipxe.efi -> ipxe-amd64.efi).
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

sha256() { sha256sum "$1" | awk '{print $1}'; }

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUT=$1
for tool in apt-get apt-cache dpkg-deb sha256sum; do
	command -v "$tool" >/dev/null || die "missing $tool (Debian: apt-get install apt dpkg coreutils)"
done
if [[ -n ${IPXE_VERSION:-}${IPXE_SHA256:-} ]]; then
	[[ -n ${IPXE_VERSION:-} && -n ${IPXE_SHA256:-} ]] || die "set IPXE_VERSION and IPXE_SHA256 together (a version is pinned by its .deb's sha256)"
fi
VERSION=${IPXE_VERSION:-$PIN_VERSION}
PIN=${IPXE_SHA256:-$PIN_SHA256}
[[ $PIN =~ ^[0-9a-f]{64}$ ]] || die "pinned sha256 \"$PIN\" is not 64 lower-case hex digits"
CACHE=${IPXE_CACHE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/ipxe}
DEB_NAME=ipxe_${VERSION}_all.deb

# 1. Up to date already?
uptodate() {
	local src=$OUT/SOURCE f want
	[[ -f $src ]] || return 1
	grep -qxF "version: $VERSION" "$src" || return 1
	grep -qxF "deb-sha256: $PIN" "$src" || return 1
	for f in "${FILES[@]}"; do
		want=$(awk -v f="$f" '$1 == "file:" && $2 == f {print $3}' "$src")
		[[ -n $want && -f $OUT/$f && $(sha256 "$OUT/$f") == "$want" ]] || return 1
	done
}
if uptodate; then
	echo "materialize-ipxe: $OUT already holds ipxe $VERSION (${FILES[*]}): nothing to do"
	exit 0
fi

TMP=$(mktemp -d)
chmod 0755 "$TMP" # apt runs its downloads as _apt
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/out" "$CACHE"

# 2. The cache.
deb=$CACHE/$DEB_NAME
if [[ -f $deb ]]; then
	got=$(sha256 "$deb")
	[[ $got == "$PIN" ]] || die "$deb: sha256 $got, the pin says $PIN: refusing it (corrupt or tampered: delete it to download again; or the pin is wrong)"
	FROM="cached $deb, sha256 = pin"
else
	# 3. Download through trixie's signed index.
	mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
	mirror=${mirror:-http://deb.debian.org/debian}
	[[ -r $KEYRING ]] || die "$KEYRING missing (Debian package debian-archive-keyring): trixie's index cannot be verified"
	apt=$TMP/apt
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
	echo "deb [signed-by=$KEYRING] $mirror $SUITE main" >"$apt/sources.list"
	o=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null
		-o Acquire::AllowInsecureRepositories=false -o Acquire::AllowDowngradeToInsecureRepositories=false
		-o Acquire::Languages=none)
	if ! apt-get "${o[@]}" -q update >"$TMP/update.log" 2>&1; then
		cat "$TMP/update.log" >&2
		die "apt-get update of $mirror $SUITE failed (log above)"
	fi
	# An index apt could not verify is not used at all: no record below.
	index_sha=$(apt-cache "${o[@]}" show "ipxe=$VERSION" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')
	if [[ -z $index_sha ]]; then
		cat "$TMP/update.log" >&2
		die "trixie's signed index has no ipxe=$VERSION (is $mirror reachable, and did apt verify it? log above)"
	fi
	[[ $index_sha == "$PIN" ]] || die "trixie's signed index says ipxe=$VERSION has sha256 $index_sha, the pin says $PIN: refusing it (Debian rebuilt it, or the pin is wrong)"
	mkdir -p "$TMP/dl"
	if id _apt >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
		chown _apt "$TMP/dl" # apt-get download runs as _apt and must write here
	fi
	if ! (cd "$TMP/dl" && apt-get "${o[@]}" -q download "ipxe=$VERSION" >"$TMP/download.log" 2>&1); then
		cat "$TMP/download.log" >&2
		die "apt-get download ipxe=$VERSION failed (log above)"
	fi
	got=$(sha256 "$TMP/dl/$DEB_NAME")
	[[ $got == "$PIN" ]] || die "$DEB_NAME from $mirror: sha256 $got, the pin says $PIN: refusing it"
	install -m 0644 "$TMP/dl/$DEB_NAME" "$CACHE/.$DEB_NAME.tmp"
	mv -f "$CACHE/.$DEB_NAME.tmp" "$deb"
	FROM="apt-get download from $mirror $SUITE main (signed index, sha256 = pin)"
fi

# 4. Unpack and copy.
dpkg-deb -x "$deb" "$TMP/x"
for f in "${FILES[@]}"; do
	path=$(resolve "$TMP/x" "${SRC[$f]}")
	[[ -f $TMP/x/$path ]] || die "ipxe=$VERSION has no /${SRC[$f]}"
	cp "$TMP/x/$path" "$TMP/out/$f"
	SRC[$f]=$path
done

{
	echo "package: ipxe"
	echo "version: $VERSION"
	echo "suite: debian $SUITE"
	echo "deb-sha256: $PIN"
	echo "from: $SUITE main via apt's signed index, .deb sha256 checked against the pin"
	for f in "${FILES[@]}"; do
		echo "file: $f $(sha256 "$TMP/out/$f") /${SRC[$f]}"
	done
} >"$TMP/out/SOURCE"

publish "$OUT" "$TMP/out" "${FILES[@]}"
echo "materialize-ipxe: ${FILES[*]} from ipxe $VERSION ($FROM) in $OUT"
