package main

// The hidden command the disk-zeroing Job runs on a node
// (disks.ZeroJob): rackboot __zero-ranges --device /host/dev/sdb
// --serial S --size N --range OFF:LEN ...

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/disks"
)

func init() {
	subcommands = append(subcommands, zeroRangesCmd)
}

type zeroFlags struct {
	device, serial, wwid, resultFile string
	size                             int64
	ranges                           []string
}

func zeroRangesCmd(*app) *cobra.Command {
	var f zeroFlags
	cmd := &cobra.Command{
		Use:    disks.ZeroCommand + " --device PATH --serial S --range OFF:LEN...",
		Short:  "Zero byte ranges of a block device after checking its serial (run by rackboot's disk-zeroing Job)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runZeroRanges(cmd.OutOrStdout(), &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.device, "device", "", "the block device, e.g. /host/dev/sdb")
	fl.StringVar(&f.serial, "serial", "", "the disk's serial as Talos reports it (a loop device: its backing file); nothing is written unless the device has it")
	fl.StringVar(&f.wwid, "wwid", "", "instead of --serial, for a disk Talos reports no serial for: its WWID, which the device's sysfs wwid must be")
	fl.Int64Var(&f.size, "size", 0, "the size in bytes the device must have (0: not checked)")
	fl.StringArrayVar(&f.ranges, "range", nil, "OFFSET:LENGTH in bytes to zero (repeatable)")
	fl.StringVar(&f.resultFile, "result-file", "", "also write the summary (or the error) here: the Job's termination message")
	return cmd
}

func runZeroRanges(out io.Writer, f *zeroFlags) error {
	res := func(s string) {
		if f.resultFile != "" {
			_ = os.WriteFile(f.resultFile, []byte(s+"\n"), 0o644)
		}
	}
	fail := func(err error) error {
		res("refused or failed: " + err.Error())
		return &exitError{code: 1, err: err}
	}
	if f.device == "" || len(f.ranges) == 0 {
		return fail(fmt.Errorf("give --device PATH, --serial S (or --wwid W) and at least one --range OFFSET:LENGTH"))
	}
	var rs []disks.Range
	for _, s := range f.ranges {
		r, err := disks.ParseRange(s)
		if err != nil {
			return fail(err)
		}
		rs = append(rs, r)
	}
	rep, err := disks.ZeroDevice(disks.ZeroOptions{Device: f.device, Serial: f.serial, WWID: f.wwid, Size: f.size, Ranges: rs})
	if err != nil {
		return fail(err)
	}
	for _, r := range rep.Ranges {
		fmt.Fprintf(out, "zeroed %d bytes at %d (%s) with %s\n", r.Length, r.Offset, disks.FormatOffset(r.Offset), r.How)
	}
	id := "serial " + f.serial
	if f.serial == "" {
		id = fmt.Sprintf("WWID %q", f.wwid)
	}
	sum := fmt.Sprintf("zeroed %d range(s), %d bytes, on %s (%s by %s, %d bytes), synced, read back as zeros",
		len(rep.Ranges), rep.Bytes, f.device, id, rep.Identity, rep.Size)
	fmt.Fprintln(out, sum)
	res(sum)
	return nil
}
