#!/usr/bin/env bash
# standin-kernel.sh OUTDIR — materialize Debian's 6.1 kernel and the modules the
# rackboot stand-in boot image needs into OUTDIR (git-ignored). Nothing here is
# committed: the kernel comes from a pinned Debian package, checked against
# apt's SHA256.
#
#   OUTDIR/vmlinuz
#   OUTDIR/modules/<name>.ko      (uncompressed, as Debian 6.1 ships them)
#   OUTDIR/modules/order          module names in load (dependency) order
#   OUTDIR/SOURCE                 package, version, sha256, module list
#
# Environment: STANDIN_KERNEL_PKG / STANDIN_KERNEL_VERSION override the pin.
set -euo pipefail

PIN_PKG=linux-image-6.1.0-56-amd64
PIN_VERSION=6.1.192-2

# Modules to take, by name (dashes or underscores); their depends= closure is
# added automatically from each module's .modinfo.
MODULES=(
	e1000
	virtio virtio_ring virtio_pci virtio_pci_legacy_dev virtio_pci_modern_dev virtio_net net_failover failover
	nvme nvme_core
	scsi_common scsi_mod libata libahci ahci sd_mod
	cdrom sr_mod isofs
	fat vfat nls_cp437 nls_ascii
	virtio_blk
	usb_common usbcore xhci_hcd xhci_pci usb_storage
	efivarfs
	button
)

die() { echo "standin-kernel: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUT=$1
for tool in apt-get apt-cache dpkg-deb sha256sum; do
	command -v "$tool" >/dev/null || die "missing $tool (Debian: apt-get install apt dpkg coreutils)"
done

PKG=${STANDIN_KERNEL_PKG:-$PIN_PKG}
VERSION=${STANDIN_KERNEL_VERSION:-$PIN_VERSION}

if ! apt-cache show "$PKG=$VERSION" >/dev/null 2>&1; then
	echo "standin-kernel: pinned $PKG=$VERSION is not offered by apt (run apt-get update?)" >&2
	PKG=$(apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -n1 || true)
	[[ -n $PKG ]] || die "apt offers no linux-image-6.1.0-N-amd64 at all"
	VERSION=$(apt-cache policy "$PKG" | awk '/Candidate:/ {print $2}')
	[[ -n $VERSION && $VERSION != "(none)" ]] || die "no candidate version for $PKG"
	echo "standin-kernel: FALLING BACK to $PKG=$VERSION; update PIN_PKG/PIN_VERSION in $0" >&2
fi

WANT_SHA=$(apt-cache show "$PKG=$VERSION" | awk '/^SHA256:/ {print $2; exit}')
[[ -n $WANT_SHA ]] || die "apt-cache show $PKG=$VERSION has no SHA256"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# apt-get download drops privileges to _apt, which must be able to write here.
chmod 0755 "$TMP"
mkdir -m 0777 "$TMP/dl"

(cd "$TMP/dl" && apt-get download -q "$PKG=$VERSION" >/dev/null) || die "apt-get download $PKG=$VERSION failed"
DEB=$(ls "$TMP"/dl/*.deb)
GOT_SHA=$(sha256sum "$DEB" | awk '{print $1}')
[[ $GOT_SHA == "$WANT_SHA" ]] || die "sha256 mismatch for $DEB: got $GOT_SHA, apt says $WANT_SHA"

dpkg-deb -x "$DEB" "$TMP/root"
KVER=${PKG#linux-image-}
MODROOT="$TMP/root/lib/modules/$KVER"
[[ -d $MODROOT ]] || die "no $MODROOT in $DEB"
VMLINUZ="$TMP/root/boot/vmlinuz-$KVER"
[[ -f $VMLINUZ ]] || die "no $VMLINUZ in $DEB"

# Index every module by its normalized name (dashes -> underscores).
declare -A PATHS
while IFS= read -r f; do
	base=$(basename "$f")
	base=${base%.xz}
	base=${base%.ko}
	PATHS[${base//-/_}]=$f
done < <(find "$MODROOT" -name '*.ko' -o -name '*.ko.xz')

declare -A SEEN
ORDER=()
visit() {
	local name=${1//-/_}
	[[ -n ${SEEN[$name]:-} ]] && return 0
	SEEN[$name]=1
	local path=${PATHS[$name]:-}
	if [[ -z $path ]]; then
		# Built into the kernel: fine as long as modinfo of a dependant does not name it.
		echo "standin-kernel: $name is not a module in $KVER (built in?)" >&2
		return 0
	fi
	[[ $path == *.ko ]] || die "$path is compressed; the init loads plain .ko only"
	local deps
	deps=$(grep -a -o -m1 'depends=[^[:cntrl:]]*' "$path" | head -n1 | cut -d= -f2 || true)
	local d
	IFS=, read -r -a darr <<<"$deps"
	for d in "${darr[@]}"; do
		[[ -n $d ]] && visit "$d"
	done
	ORDER+=("$name")
}
for m in "${MODULES[@]}"; do visit "$m"; done

rm -rf "$OUT/modules"
mkdir -p "$OUT/modules"
cp "$VMLINUZ" "$OUT/vmlinuz"
for m in "${ORDER[@]}"; do
	cp "${PATHS[$m]}" "$OUT/modules/$m.ko"
done
printf '%s\n' "${ORDER[@]}" >"$OUT/modules/order"
{
	echo "package=$PKG"
	echo "version=$VERSION"
	echo "sha256=$GOT_SHA"
	echo "kernel=$KVER"
	echo "modules=${ORDER[*]}"
} >"$OUT/SOURCE"
echo "standin-kernel: $PKG=$VERSION -> $OUT (${#ORDER[@]} modules)"
