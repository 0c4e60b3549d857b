package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/imager/bootloaders"
	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "image",
			Short: "Offline install media: a bootable ISO or USB disk image per machine, and writing it to a stick",
		}
		cmd.AddCommand(newImageBuildCmd(a, "iso"), newImageBuildCmd(a, "usb"), newImageWriteCmd(a))
		return cmd
	})
}

// imageFlags are the flags of `image iso` and `image usb`.
type imageFlags struct {
	output      string
	all         bool
	kernel      string
	initrd      string
	extraArgs   []string
	bootloaders string
}

// secretsWarning is printed after every image written: the config on it
// carries the cluster's CA keys and tokens.
const secretsWarning = "the image contains the cluster's secrets (the machine config with CA keys and join tokens): " +
	"keep it like a password and delete it once the machine is installed"

func newImageBuildCmd(a *app, kind string) *cobra.Command {
	f := &imageFlags{}
	ext, what := ".iso", `an ISO 9660 image bootable on BIOS (isolinux) and UEFI (systemd-boot),
for a CD or virtual media (iDRAC, iLO). It cannot be dd'ed to a stick (no
isohybrid): use `+"`rackboot image usb`"+` for sticks`
	if kind == "usb" {
		ext, what = ".img", `a raw GPT disk image (an EFI system partition with systemd-boot, plus a
partition named metal-iso), UEFI only, for `+"`rackboot image write`"+` or dd`
	}
	cmd := &cobra.Command{
		Use:   kind + " MACHINE -o FILE | --all -o DIR",
		Short: "Build the offline install " + strings.ToUpper(kind) + " image of a machine (or of all)",
		Long: `Builds ` + what + `.

The image boots the machine's Talos kernel and initramfs from the asset cache
(` + "`rackboot assets pull`" + ` first; nothing is downloaded here) with the Talos kernel
arguments and talos.config=metal-iso; Talos then reads /config.yaml, the
machine's config, from the volume labelled metal-iso on the image. The image
thus holds the cluster's secrets: it is written 0600.

With SOURCE_DATE_EPOCH set the same inputs give the same bytes.
--kernel and --initrd boot another kernel (the lab's stand-in) instead.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if f.all && len(args) > 0 {
				return errors.New("give a machine name or --all, not both")
			}
			if !f.all && len(args) != 1 {
				return errors.New("give one machine name (or --all -o DIR)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImageBuild(cmd, a, f, kind, ext, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "", "output file (default MACHINE"+ext+"); with --all, the output directory")
	fl.BoolVar(&f.all, "all", false, "build one image per machine of the rack into the -o directory")
	fl.StringVar(&f.kernel, "kernel", "", "boot this kernel instead of the cached Talos one (with --initrd)")
	fl.StringVar(&f.initrd, "initrd", "", "boot this initramfs instead of the cached Talos one (with --kernel)")
	fl.StringArrayVar(&f.extraArgs, "kernel-arg", nil, "extra kernel argument, one per flag (repeatable; commas stay), e.g. console=ttyS0,115200n8")
	fl.StringVar(&f.bootloaders, "bootloaders", "", "take isolinux.bin, ldlinux.c32 and systemd-bootx64.efi from this directory instead of the embedded ones")
	return cmd
}

func runImageBuild(cmd *cobra.Command, a *app, f *imageFlags, kind, ext string, args []string) error {
	if (f.kernel == "") != (f.initrd == "") {
		return errors.New("--kernel and --initrd go together")
	}
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	var machines []*profiles.Machine
	if f.all {
		if f.output == "" {
			return errors.New("--all needs -o DIR")
		}
		for i := range r.Machines {
			machines = append(machines, &r.Machines[i])
		}
	} else {
		if err := a.knownMachine(r, args[0]); err != nil {
			return err
		}
		machines = []*profiles.Machine{r.Machine(args[0])}
	}
	outputs := map[string]string{}
	for _, m := range machines {
		switch {
		case f.all:
			outputs[m.Name] = filepath.Join(f.output, m.Name+ext)
		case f.output == "":
			outputs[m.Name] = m.Name + ext
		default:
			outputs[m.Name] = f.output
		}
		if arch := m.ArchOrDefault(); arch != "amd64" {
			return fmt.Errorf("%s is %s: install images are built for amd64 machines only (isolinux and BOOTX64.EFI)", m.Name, arch)
		}
	}
	var loaders fs.FS
	if f.bootloaders != "" {
		loaders, err = bootloaders.Dir(f.bootloaders)
	} else {
		loaders, err = bootloaders.FS()
	}
	if err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	opts := []imager.BuilderOption{
		imager.WithBuilderLogger(a.log),
		imager.WithBuilderProgress(imager.NewProgress(stderr, assetsIsTerminal(stderr), time.Now, 5*time.Second)),
	}
	sde, ok, err := imager.ParseSourceDateEpoch(os.Getenv(imager.EnvSourceDateEpoch))
	if err != nil {
		return err
	}
	if ok {
		opts = append(opts, imager.WithSourceDateEpoch(sde))
	}
	builder, err := imager.NewBuilder(loaders, opts...)
	if err != nil {
		return err
	}

	// After every check of the arguments (nothing is created for a typo),
	// before anything is written.
	bundle, err := a.clusterSecrets()
	if err != nil {
		return err
	}
	if f.all {
		if err := os.MkdirAll(f.output, 0o700); err != nil {
			return fmt.Errorf("output directory: %w", err)
		}
	}

	var cache *imager.Cache
	if f.kernel == "" {
		if cache, err = openAssetCache(a); err != nil {
			return err
		}
		defer cache.Close()
	}
	version := r.Cluster.TalosVersion
	for _, m := range machines {
		spec, err := imageSpec(r, m, bundle, cache, f)
		if err != nil {
			return err
		}
		out := outputs[m.Name]
		fmt.Fprintf(cmd.OutOrStdout(), "building %s image of %s (Talos %s) into %s\n", kind, m.Name, version, out)
		var img *imager.Image
		if kind == "usb" {
			img, err = builder.USB(cmd.Context(), spec, out)
		} else {
			img, err = builder.ISO(cmd.Context(), spec, out)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d bytes, sha256 %s\n", img.Path, img.Size, img.SHA256)
	}
	fmt.Fprintln(stderr, "rackboot: "+secretsWarning)
	return nil
}

// imageSpec gathers what machine m's image carries: its config, its Talos
// kernel arguments with talos.config=metal-iso, and the kernel and
// initramfs (from the cache, or --kernel/--initrd).
func imageSpec(r *profiles.Rack, m *profiles.Machine, bundle *secrets.Bundle, cache *imager.Cache, f *imageFlags) (imager.ImageSpec, error) {
	version, arch := r.Cluster.TalosVersion, m.ArchOrDefault()
	sch := r.Schematic(m)
	opts, err := mirrorConfigOptions(r)
	if err != nil {
		return imager.ImageSpec{}, err
	}
	cfg, err := profiles.GenerateConfig(r, m.Name, bundle, opts...)
	if err != nil {
		return imager.ImageSpec{}, err
	}
	args, err := profiles.KernelArgs(version, arch, sch.KernelArgs)
	if err != nil {
		return imager.ImageSpec{}, fmt.Errorf("kernel arguments for %s: %w", m.Name, err)
	}
	args = append(args, f.extraArgs...)
	args = append(args, "talos.config=metal-iso")
	spec := imager.ImageSpec{Name: m.Name, Cmdline: strings.Join(args, " "), Config: cfg, Kernel: f.kernel, Initramfs: f.initrd}
	if f.kernel != "" {
		return spec, nil
	}
	id, err := profiles.SchematicID(sch)
	if err != nil {
		return imager.ImageSpec{}, fmt.Errorf("schematic of %s: %w", m.Name, err)
	}
	// Never download here: Has names the `rackboot assets pull` that is missing.
	if err := cache.Has(version, id, arch); err != nil {
		return imager.ImageSpec{}, fmt.Errorf("boot files for %s: %w", m.Name, err)
	}
	spec.Kernel = filepath.Join(cache.Dir(), filepath.FromSlash(cache.Kernel(version, id, arch)))
	spec.Initramfs = filepath.Join(cache.Dir(), filepath.FromSlash(cache.Initramfs(version, id, arch)))
	return spec, nil
}

func newImageWriteCmd(a *app) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "write IMAGE DEVICE",
		Short: "Write an image to a USB stick, with a progress bar and a read-back check (Linux)",
		Long: `Writes IMAGE (from ` + "`rackboot image usb`" + `) to the whole disk DEVICE (e.g. /dev/sdb)
in 4 MiB chunks, fsyncs, and reads it back comparing sha256 sums.

It refuses the disk holding the running system, a partition, a device that
is mounted (itself or a partition), used as swap or held by LVM/dm-crypt/RAID,
and, unless --force, a device the kernel does not mark removable (some USB
SSDs): check the device name twice, everything on it is lost.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			stderr := cmd.ErrOrStderr()
			res, err := imager.WriteImage(cmd.Context(), args[0], args[1], imager.WriteOptions{
				Force:    force,
				Progress: imager.NewProgress(stderr, assetsIsTerminal(stderr), time.Now, 5*time.Second),
				Log:      a.log,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote and verified %d bytes on %s (sha256 %s) in %s\n", res.Bytes, res.Device, res.SHA256, res.Took.Round(time.Second))
			fmt.Fprintln(stderr, "rackboot: the stick contains the cluster's secrets: wipe it once the machine is installed")
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "allow a device that is not marked removable (never the system disk, a mounted or partition device)")
	return cmd
}
