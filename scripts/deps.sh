#!/usr/bin/env bash
# Installs the Debian packages rackboot's build and tests need, only those
# missing. Safe to run again; does nothing when all are present.
set -euo pipefail

pkgs=(
  # VMs, firmware and iPXE (the lab, e2e tests; iPXE binaries are embedded from `ipxe`)
  qemu-system-x86 qemu-utils ovmf ipxe ipxe-qemu seabios
  # the arm64 UEFI VM (TestArm64UEFINetboot): qemu-system-aarch64 and AAVMF
  qemu-system-arm qemu-efi-aarch64
  # network test peers: home-router DHCP, DHCP clients, TFTP clients/server, namespaces, nftables loss
  dnsmasq-base iproute2 nftables ndisc6 busybox-static udhcpc isc-dhcp-client tftp-hpa atftp curl openssl iputils-arping
  # boot media: independent readers and boot loaders taken at build time
  xorriso isolinux syslinux-common systemd-boot-efi mtools dosfstools fdisk gdisk cpio
  # the status page is tested in a real browser
  chromium
  # the registry mirror: a real upstream registry (CNCF distribution) and real pull clients
  docker-registry skopeo containerd
  # a real kubelet node in the tests (internal/kubetest): runc for containerd, gcc to build Kubernetes' pause
  runc gcc libc6-dev
  # BMCs: a real IPMI BMC simulator and client; sushy-tools' Redfish emulator (../shared/tools) runs on these
  openipmi ipmitool python3-flask python3-tenacity python3-bcrypt python3-webob python3-pbr python3-requests
  # disk inspection and wipes: Ceph's own bluestore label reader (ceph-bluestore-tool), hexdump
  ceph-osd bsdextrautils
  # app databases: a real PostgreSQL runs the per-app SQL and pg_hba rules (bundles/appdb)
  postgresql
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "deps: missing Debian packages: ${missing[*]}" >&2
  echo "deps: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
# Another apt may be running (unattended upgrades, a colleague): wait for its lock.
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
