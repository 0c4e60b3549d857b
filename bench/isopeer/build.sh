#!/usr/bin/env bash
# bench/isopeer/build.sh — P5's peer: the ISO `rackboot image iso` writes,
# built with the usual tools from the same inputs, as one timed script:
# the UEFI boot image (FAT16 with mkfs.fat, filled with mmd + mcopy: the
# same files, paths and size as rackboot's boot/efiboot.img), then
# `xorriso -as mkisofs` with the same tree and El Torito layout (BIOS
# isolinux with a boot table, then the EFI entry; Rock Ridge, no Joliet,
# volume metal-iso), fsynced before the script returns.
#
#   build.sh OUT NAME KERNEL INITRD CONFIG CMDLINE_FILE BOOTLOADERS_DIR
#
# CONFIG is the rendered machine config (config.yaml) and CMDLINE_FILE the
# kernel command line, both as rackboot puts them in its ISO (rackboot
# renders them itself on its side). The layout follows imager/iso.go
# (stageISO, finalizeISO) and imager/esp.go (espFiles, FATLayout,
# LoaderConf, LoaderEntry). Packages: dosfstools mtools xorriso.
set -euo pipefail
[ $# = 7 ] || { echo "usage: $0 OUT NAME KERNEL INITRD CONFIG CMDLINE_FILE BOOTLOADERS_DIR" >&2; exit 2; }
out=$1 name=$2 kernel=$3 initrd=$4 config=$5 cmdline=$(cat "$6") bl=$7

t=$(mktemp -d "$(dirname "$out")/.isopeer.XXXXXX")
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/isolinux" "$t/boot"
cp "$bl/isolinux.bin" "$bl/ldlinux.c32" "$t/isolinux/"
printf 'DEFAULT rackboot\nPROMPT 0\nTIMEOUT 0\nLABEL rackboot\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd.img\n  APPEND %s\n' "$cmdline" >"$t/isolinux/isolinux.cfg"
cp "$kernel" "$t/boot/vmlinuz"
cp "$initrd" "$t/boot/initrd.img"
install -m 600 "$config" "$t/config.yaml"

# The ESP: what its files take (each rounded up to 4 KiB, plus 4 KiB for
# each of EFI, EFI/BOOT, loader, loader/entries), + 5 % + 4 MiB, rounded
# up to 4 MiB, at least 16 MiB: FATLayout's size.
printf 'default %s.conf\ntimeout 0\neditor no\n' "$name" >"$t/loader.conf"
printf 'title rackboot %s\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$name" "$cmdline" >"$t/entry.conf"
content=$(stat -c %s "$bl/systemd-bootx64.efi" "$t/loader.conf" "$t/entry.conf" "$kernel" "$initrd" |
  awk '{s += int(($1 + 4095) / 4096) * 4096} END {print s + 4 * 4096}')
mib=1048576
size=$(( (content + content / 20 + 4 * mib + 4 * mib - 1) / (4 * mib) * (4 * mib) ))
[ $size -ge $((16 * mib)) ] || size=$((16 * mib))
esp=$t/boot/efiboot.img
truncate -s "$size" "$esp"
mkfs.fat -F 16 -n EFI "$esp" >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$bl/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$t/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$t/entry.conf" "::/loader/entries/$name.conf"
mcopy -i "$esp" "$kernel" ::/vmlinuz
mcopy -i "$esp" "$initrd" ::/initrd.img
rm "$t/loader.conf" "$t/entry.conf"

xorriso -as mkisofs -quiet -o "$out" -V metal-iso -R \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
  -eltorito-alt-boot -e boot/efiboot.img -no-emul-boot "$t"
chmod 600 "$out"
# Durable before it returns, as rackboot's ISO is (rackboot writes a temp
# file, fsyncs it and renames it): fsync the ISO.
sync "$out"
