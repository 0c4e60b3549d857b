//go:build linux

package e2e

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/lab/standin/report"
)

// The scenarios' checks must be able to fail: these tests give them disks
// and reports that are wrong in one way each, without any VM.

// makeDisk creates a qcow2 image of size; with sfdiskScript it first lays
// a partition table on a raw file with util-linux sfdisk; with writes it
// writes those qemu-io commands into the image.
func makeDisk(t *testing.T, path, size, sfdiskScript string, writes ...string) {
	t.Helper()
	run := func(name string, stdin string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	if sfdiskScript == "" {
		run("qemu-img", "", "create", "-q", "-f", lab.DiskFormat, path, size)
	} else {
		raw := path + ".raw"
		run("qemu-img", "", "create", "-q", "-f", "raw", raw, size)
		run("sfdisk", sfdiskScript, "--quiet", raw)
		run("qemu-img", "", "convert", "-f", "raw", "-O", lab.DiskFormat, raw, path)
		os.Remove(raw)
	}
	for _, w := range writes {
		run("qemu-io", "", "-f", lab.DiskFormat, "-c", w, path)
	}
}

func TestInstallDiskProblems(t *testing.T) {
	for prog, pkg := range map[string]string{"qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "sfdisk": "fdisk"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Fatalf("%s not found: run `make deps` (Debian package %s)", prog, pkg)
		}
	}
	const meta1M = "label: gpt\nstart=2048, size=2048, name=META\n"
	tests := []struct {
		name  string
		nvme  string   // sfdisk script for the NVMe ("" = empty disk)
		sata1 []string // qemu-io writes into the second SATA disk
		want  []string // substrings, one per expected problem ("" = none)
	}{
		{"installed on the NVMe only", meta1M, nil, nil},
		{"nothing installed", "", nil, []string{"no partition table"}},
		{"META of 2 MiB", "label: gpt\nstart=2048, size=4096, name=META\n", nil, []string{"META partition is 2097152 bytes"}},
		{"no META", "label: gpt\nstart=2048, size=2048, name=DATA\n", nil, []string{"0 partitions named META"}},
		{"MBR", "label: dos\nstart=2048, size=2048\n", nil, []string{`partition table "dos"`, "0 partitions named META"}},
		{"a SATA disk written in its first MiB", meta1M, []string{"write -P 0xab 4096 512"},
			[]string{"sata1.qcow2 of vm0 was written", "byte 4096 of the first MiB is 0xab"}},
		{"a SATA disk written with zeros far out", meta1M, []string{"write -P 0 512M 64k"},
			[]string{"sata1.qcow2 of vm0 was written"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			vm := &lab.VMState{Name: "vm0", Disks: []string{
				filepath.Join(dir, "nvme0.qcow2"), filepath.Join(dir, "sata0.qcow2"), filepath.Join(dir, "sata1.qcow2"),
			}}
			makeDisk(t, vm.Disks[0], "64M", tt.nvme)
			makeDisk(t, vm.Disks[1], "1G", "")
			makeDisk(t, vm.Disks[2], "1G", "", tt.sata1...)
			got := installDiskProblems(vm, dir)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tt.want), strings.Join(got, "\n"))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d: %q, want it to say %q", i, got[i], w)
				}
			}
		})
	}
	if got := installDiskProblems(&lab.VMState{Name: "x", Disks: []string{"/nonexistent/sata0.qcow2"}}, t.TempDir()); len(got) != 1 {
		t.Errorf("a VM without its NVMe: %v", got)
	}
}

func TestReportProblems(t *testing.T) {
	vm := &lab.VMState{Name: "cp1", MAC: "52:54:00:e2:e0:01", UUID: "633a5015-fc60-5f3f-bb75-01f83381e12f", Serial: "LAB-CP1",
		Disks: []string{"nvme0.qcow2", "sata0.qcow2", "sata1.qcow2"}}
	good := func() report.Report {
		return report.Report{
			Name: "cp1", MAC: "52:54:00:E2:E0:01", UUID: vm.UUID, Serial: vm.Serial,
			ConfigSource: "http", ConfigSHA256: strings.Repeat("ab", 32), InstallDisk: "/dev/nvme0n1", SDUntouched: true,
			Result:          report.ResultInstalled,
			InstallerImage:  "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.0",
			InstallerDigest: "sha256:" + strings.Repeat("cd", 32), InstallerEndpoint: "http://10.99.0.1:5000", InstallerBytes: 19 << 20, InstallerAttempts: 1,
			Disks: []report.Disk{
				{Dev: "/dev/nvme0n1", Transport: "nvme", HasMeta: true},
				{Dev: "/dev/sda", Transport: "sata"},
				{Dev: "/dev/sdb", Transport: "sata"},
			},
		}
	}
	tests := []struct {
		name   string
		change func(*report.Report)
		want   string // "" = no problem
	}{
		{"good", func(*report.Report) {}, ""},
		{"failed", func(r *report.Report) { r.Result, r.Error = report.ResultFailed, "no disks matched" }, `result "failed"`},
		{"booted, not installed", func(r *report.Report) { r.Result = report.ResultBooted }, `result "booted"`},
		{"another machine", func(r *report.Report) { r.Name = "w1" }, `report names "w1"`},
		{"another UUID", func(r *report.Report) { r.UUID = "00000000-0000-0000-0000-000000000000" }, "report names"},
		{"config from metal-iso", func(r *report.Report) { r.ConfigSource = "metal-iso" }, `config from "metal-iso"`},
		{"installed on sda", func(r *report.Report) { r.InstallDisk = "/dev/sda" }, `install disk "/dev/sda"`},
		{"sd touched", func(r *report.Report) { r.SDUntouched = false }, "sd untouched false"},
		{"META on sdb", func(r *report.Report) { r.Disks[2].HasMeta = true }, "/dev/sdb transport"},
		{"no META on the NVMe", func(r *report.Report) { r.Disks[0].HasMeta = false }, "/dev/nvme0n1 transport"},
		{"a SATA disk missing", func(r *report.Report) { r.Disks = r.Disks[:2] }, "1 sd* disks"},
		{"installer from the upstream", func(r *report.Report) { r.InstallerEndpoint = "https://factory.talos.dev" }, "not from rackboot's mirror"},
		{"installer not pulled", func(r *report.Report) {
			r.InstallerImage, r.InstallerDigest, r.InstallerEndpoint, r.InstallerBytes = "", "", "", 0
		}, "installer image"},
		{"installer without a digest", func(r *report.Report) { r.InstallerDigest = "latest" }, `digest "latest"`},
		{"installer of 0 bytes", func(r *report.Report) { r.InstallerBytes = 0 }, "0 bytes"},
		{"another installer image", func(r *report.Report) { r.InstallerImage = "ghcr.io/siderolabs/installer:v1.13.0" }, "not the Image Factory's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good()
			tt.change(&r)
			got := reportProblems(r, vm, "cp1")
			if tt.want == "" {
				if len(got) != 0 {
					t.Fatalf("problems in a good report: %v", got)
				}
				return
			}
			if len(got) != 1 || !strings.Contains(got[0], tt.want) {
				t.Fatalf("got %q, want one problem saying %q", got, tt.want)
			}
		})
	}
}

func TestInOrder(t *testing.T) {
	tests := []struct {
		have, want []string
		ok         bool
	}{
		{[]string{"dhcp", "script", "kernel", "initrd", "config", "installing", "installed"}, netbootStages, true},
		{[]string{"dhcp", "dhcp", "script", "kernel", "initrd", "dhcp", "config", "installing", "installed", "local-boot"}, netbootStages, true},
		{[]string{"dhcp", "script", "kernel", "initrd", "installing", "installed"}, netbootStages, false},
		{[]string{"dhcp", "config", "script", "kernel", "initrd", "installing", "installed"}, netbootStages, false},
		{nil, []string{"dhcp"}, false},
		{[]string{"x"}, nil, true},
	}
	for _, tt := range tests {
		if got := inOrder(tt.have, tt.want); got != tt.ok {
			t.Errorf("inOrder(%v, %v) = %v, want %v", tt.have, tt.want, got, tt.ok)
		}
	}
}

// installerProblems checks that an install pulled its installer image
// (the config's factory.talos.dev metal installer) from rackboot's
// registry mirror (plain http on the rack address: the fallback to the
// upstream is always https://factory.talos.dev), with a sha256 digest and
// some bytes.
func installerProblems(rep report.Report) []string {
	if rep.InstallerImage == "" && rep.InstallerEndpoint == "" {
		return []string{"report: no installer image was pulled before the install"}
	}
	var probs []string
	if !strings.HasPrefix(rep.InstallerImage, "factory.talos.dev/metal-installer/") {
		probs = append(probs, fmt.Sprintf("report: installer image %q is not the Image Factory's metal installer", rep.InstallerImage))
	}
	if d, ok := strings.CutPrefix(rep.InstallerDigest, "sha256:"); !ok || len(d) != 64 {
		probs = append(probs, fmt.Sprintf("report: installer digest %q, want sha256:<64 hex>", rep.InstallerDigest))
	}
	if u, err := url.Parse(rep.InstallerEndpoint); err != nil || u.Scheme != "http" || u.Port() == "" || u.Hostname() == "factory.talos.dev" {
		probs = append(probs, fmt.Sprintf("report: installer pulled from %q, not from rackboot's mirror (http://<rackboot>:<port>)", rep.InstallerEndpoint))
	}
	if rep.InstallerBytes <= 0 {
		probs = append(probs, fmt.Sprintf("report: installer pull of %d bytes", rep.InstallerBytes))
	}
	return probs
}
