package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "assets",
			Short: "The boot asset cache: Talos kernels and initramfs, from the Image Factory or imported offline",
		}
		cmd.AddCommand(newAssetsPullCmd(a), newAssetsImportCmd(a), newAssetsListCmd(a))
		return cmd
	})
}

// assetsDir is the asset cache of the state directory.
func assetsDir(a *app) string { return filepath.Join(a.StateDir(), "assets") }

func openAssetCache(a *app) (*imager.Cache, error) {
	return imager.OpenCache(assetsDir(a), imager.WithCacheLogger(a.log))
}

// assetsIsTerminal reports whether w is a terminal (then a progress bar is drawn).
func assetsIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newAssetsPullCmd(a *app) *cobra.Command {
	var version, schematic, arch, factoryURL, releaseURL string
	var img imagePullFlags
	cmd := &cobra.Command{
		Use:   "pull",
		Short: "Download the boot files and every container image the rack needs into the cache",
		Long: `Download the boot assets from the Talos Image Factory into the asset cache
(<state>/assets). With --version, --schematic and --arch all given, pulls that
one set; otherwise pulls every distinct (version, schematic, arch) of the rack's
machines, each flag overriding the rack's value. A machine whose schematic is
given as extensions is registered with the factory (POST /schematics) first.
An interrupted pull is resumed by the next one. For the vanilla schematic the
files are checked against the release's sha256sum.txt when it is reachable.

Then every container image the rack needs (each schematic's installer, the
Kubernetes and Talos system images of the rack's versions, the bundles'
images) is pulled by digest into <state>/assets/images, an OCI image layout
that rackboot serve offers to the machines as a registry mirror. Images held
complete are not fetched again (--refresh asks the registries whether tags
moved).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if img.only {
				return pullImages(cmd, a, &img)
			}
			ctx := cmd.Context()
			c, err := openAssetCache(a)
			if err != nil {
				return err
			}
			defer c.Close()
			f, err := imager.NewFactory(c, imager.WithFactoryURL(factoryURL), imager.WithReleaseURL(releaseURL), imager.WithFactoryLogger(a.log))
			if err != nil {
				return err
			}
			var sets []imager.Set
			if version != "" && schematic != "" && arch != "" {
				sets = []imager.Set{{Version: version, Schematic: schematic, Arch: arch}}
				img.skip = true // one set named by flags: the rack's images are not asked for
			} else {
				r, err := a.loadRack(cmd)
				if err != nil {
					return err
				}
				if sets, err = assetsRackSets(ctx, r, f, version, schematic, arch, cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			stderr := cmd.ErrOrStderr()
			progress := imager.NewProgress(stderr, assetsIsTerminal(stderr), time.Now, 5*time.Second)
			for _, s := range sets {
				if err := s.Validate(); err != nil {
					return fmt.Errorf("pull: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "pulling %s\n", s)
				m, err := f.Pull(ctx, s.Version, s.Schematic, s.Arch, progress)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", s, assetsDescribe(m))
			}
			if img.skip {
				return nil
			}
			return pullImages(cmd, a, &img)
		},
	}
	img.register(cmd)
	cmd.Flags().StringVar(&version, "version", "", "Talos version, such as v1.13.0 (default: the rack's cluster.talosVersion)")
	cmd.Flags().StringVar(&schematic, "schematic", "", "Image Factory schematic id (default: each machine's schematic)")
	cmd.Flags().StringVar(&arch, "arch", "", "amd64 or arm64 (default: each machine's arch)")
	cmd.Flags().StringVar(&factoryURL, "factory", imager.DefaultFactoryURL, "Image Factory base URL (or a mirror)")
	cmd.Flags().StringVar(&releaseURL, "release-url", imager.DefaultReleaseURL, `base URL of the Talos releases, for <url>/<version>/sha256sum.txt ("" to skip the check)`)
	return cmd
}

// assetsRackSets lists the distinct (version, schematic, arch) the rack's machines
// boot, in machine order. Flags that are set override the rack. A schematic
// given as extensions is registered with the factory, which names its id.
func assetsRackSets(ctx context.Context, r *profiles.Rack, f *imager.Factory, version, schematic, arch string, warn io.Writer) ([]imager.Set, error) {
	if version == "" {
		version = r.Cluster.TalosVersion
	}
	registered := map[string]string{} // schematic YAML → factory id
	seen := map[imager.Set]bool{}
	var sets []imager.Set
	for i := range r.Machines {
		m := &r.Machines[i]
		s := imager.Set{Version: version, Schematic: schematic, Arch: arch}
		if s.Arch == "" {
			s.Arch = m.ArchOrDefault()
		}
		if s.Schematic == "" {
			sch := r.Schematic(m)
			if sch.ID != "" {
				s.Schematic = sch.ID
			} else {
				doc, err := profiles.SchematicYAML(sch)
				if err != nil {
					return nil, fmt.Errorf("schematic of machine %s: %w", m.Name, err)
				}
				id, ok := registered[string(doc)]
				if !ok {
					if id, err = f.EnsureSchematic(ctx, doc); err != nil {
						return nil, fmt.Errorf("register the schematic of machine %s with the Image Factory: %w", m.Name, err)
					}
					registered[string(doc)] = id
					if offline, err := profiles.SchematicID(sch); err == nil && offline != id {
						fmt.Fprintf(warn, "warning: the Image Factory names machine %s's schematic %s, rackboot computed %s; using the factory's\n", m.Name, id, offline)
					}
				}
				s.Schematic = id
			}
		}
		if !seen[s] {
			seen[s] = true
			sets = append(sets, s)
		}
	}
	if len(sets) == 0 {
		return nil, errors.New("the rack has no machines: give --version, --schematic and --arch")
	}
	return sets, nil
}

func assetsDescribe(m *imager.Manifest) string {
	var parts []string
	for _, file := range []string{imager.FileKernel, imager.FileInitramfs} {
		if r, ok := m.Files[file]; ok {
			parts = append(parts, fmt.Sprintf("%s %s sha256:%s", file, assetsSize(r.Size), r.SHA256[:12]))
		}
	}
	s := strings.Join(parts, ", ")
	if k, ok := m.Files[imager.FileKernel]; ok && k.ReleaseSum != "" {
		s += " (matches the release's sha256sum.txt)"
	}
	return s
}

func assetsSize(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func newAssetsImportCmd(a *app) *cobra.Command {
	var version, schematic, arch string
	cmd := &cobra.Command{
		Use:   "import KERNEL INITRAMFS",
		Short: "Copy a kernel and an initramfs into the cache (offline; e.g. vmlinuz-amd64 and initramfs-amd64.xz of a Talos release)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version == "" {
				return errors.New("import: --version is required (the Talos version of these files, such as v1.13.0)")
			}
			c, err := openAssetCache(a)
			if err != nil {
				return err
			}
			defer c.Close()
			m, err := c.Import(imager.Set{Version: version, Schematic: schematic, Arch: arch}, args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s: %s\n", m.Set, assetsDescribe(m))
			return nil
		},
	}
	cmd.Flags().StringVar(&version, "version", "", "Talos version of the files, such as v1.13.0 (required)")
	cmd.Flags().StringVar(&schematic, "schematic", profiles.VanillaSchematicID, "Image Factory schematic id the files were built with")
	cmd.Flags().StringVar(&arch, "arch", profiles.DefaultArch, "amd64 or arm64")
	return cmd
}

func newAssetsListCmd(a *app) *cobra.Command {
	var noVerify bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the cached boot files and container images, re-hashing each against its digest",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := openAssetCache(a)
			if err != nil {
				return err
			}
			defer c.Close()
			ms, err := c.List()
			if err != nil {
				return err
			}
			bad, err := listBootSets(cmd, c, ms, noVerify)
			if err != nil {
				return err
			}
			st, err := openImageStore(a)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout())
			badImages, err := listImages(cmd.Context(), cmd.OutOrStdout(), st, !noVerify)
			if err != nil {
				return err
			}
			if bad+badImages > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d asset set(s) and %d image(s) failed verification: pull them again", bad, badImages)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noVerify, "no-verify", false, "do not re-hash the files")
	return cmd
}

// listBootSets prints the cached boot asset sets, re-hashing each unless
// noVerify, and returns how many failed.
func listBootSets(cmd *cobra.Command, c *imager.Cache, ms []*imager.Manifest, noVerify bool) (bad int, err error) {
	if len(ms) == 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "no boot files in the asset cache %s: run `rackboot assets pull` (or `rackboot assets import` offline)\n", c.Dir())
		return 0, nil
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSCHEMATIC\tARCH\tKERNEL\tINITRAMFS\tSOURCE\tVERIFIED")
	for _, m := range ms {
		verified := "not checked"
		if !noVerify {
			if err := c.Has(m.Version, m.Schematic, m.Arch); err != nil {
				verified, bad = "INCOMPLETE", bad+1
				fmt.Fprintln(cmd.ErrOrStderr(), err)
			} else if err := c.Verify(m.Version, m.Schematic, m.Arch); err != nil {
				verified, bad = "CORRUPT", bad+1
				fmt.Fprintln(cmd.ErrOrStderr(), err)
			} else {
				verified = "ok"
				if m.Files[imager.FileKernel].ReleaseSum != "" {
					verified = "ok, release sums"
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Version, m.Schematic[:12], m.Arch,
			assetsFileSize(m, imager.FileKernel), assetsFileSize(m, imager.FileInitramfs), assetsSource(m), verified)
	}
	return bad, tw.Flush()
}

func assetsFileSize(m *imager.Manifest, file string) string {
	r, ok := m.Files[file]
	if !ok {
		return "-"
	}
	return assetsSize(r.Size)
}

// assetsSource is "imported" or the host the kernel came from.
func assetsSource(m *imager.Manifest) string {
	src := m.Files[imager.FileKernel].Source
	if u, err := url.Parse(src); err == nil && u.Host != "" {
		return u.Host
	}
	if src == "" {
		return "-"
	}
	return src
}
