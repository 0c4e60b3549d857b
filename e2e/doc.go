// Package e2e holds the end-to-end tests of the whole netboot path: real
// QEMU machines (SeaBIOS or OVMF, QEMU's own iPXE ROM) in a `rackboot lab`
// netboot the stand-in image from `rackboot serve`, on private network
// namespaces only. The tests drive the rackboot binary as a user would
// (built once per run by TestMain) and read the lab's files and serve's
// status API back. They are Linux-only, need root, and fail (never skip)
// when a tool is missing: run `make deps standin` first.
//
// Scenarios: full DHCP with BIOS (then the NVMe-only install check and a
// second boot that must go to the local disk), proxy DHCP behind dnsmasq
// with UEFI, an unknown machine, a restart of serve in the middle of a
// boot, and a two-NIC machine that fetches its config from its second NIC's
// address (as Talos may: DHCP on every link, no client identifier).
package e2e
