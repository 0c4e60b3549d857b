package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/registry"
)

// imagePullFlags are `assets pull`'s flags for container images.
type imagePullFlags struct {
	skip, only, refresh bool
	upstreams           []string // host=host:port
}

func (f *imagePullFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.skip, "no-images", false, "pull the boot files only, no container images")
	fl.BoolVar(&f.only, "images-only", false, "pull the container images only, no boot files")
	fl.BoolVar(&f.refresh, "refresh", false, "ask the registries again what each tag points to, even for images already held")
	fl.StringArrayVar(&f.upstreams, "upstream", nil, "fetch a registry's images from another registry over plain HTTP, as REGISTRY=HOST:PORT (e.g. docker.io=192.168.1.5:5000, a local pull-through cache); repeatable")
}

// storeOptions turns the flags into image store options.
func (f *imagePullFlags) storeOptions() ([]registry.Option, error) {
	opts := []registry.Option{registry.WithKeychain(authn.DefaultKeychain)}
	if f.refresh {
		opts = append(opts, registry.WithRefresh())
	}
	for _, u := range f.upstreams {
		host, hostport, ok := strings.Cut(u, "=")
		if !ok || host == "" || hostport == "" || strings.Contains(hostport, "/") {
			return nil, fmt.Errorf("--upstream %q: write REGISTRY=HOST:PORT, such as docker.io=192.168.1.5:5000", u)
		}
		h, err := profiles.NormalizeRegistryHost(host)
		if err != nil {
			return nil, fmt.Errorf("--upstream: %w", err)
		}
		opts = append(opts, registry.WithUpstream(h, hostport))
	}
	return opts, nil
}

// pullImages pulls every image the rack needs into the image store, one
// line per image, and the progress of long downloads on stderr.
func pullImages(cmd *cobra.Command, a *app, f *imagePullFlags) error {
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	images, unlisted, err := rackImages(r)
	if err != nil {
		return err
	}
	opts, err := f.storeOptions()
	if err != nil {
		return err
	}
	st, err := openImageStore(a, opts...)
	if err != nil {
		return err
	}
	out, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	fmt.Fprintf(out, "pulling %d images into %s\n", len(images), st.Dir())
	var fetched, bytes int64
	for i, im := range images {
		platforms, err := parsePlatforms(im.Platforms)
		if err != nil {
			return err
		}
		p, err := st.Pull(cmd.Context(), im.Ref, platforms, throttledProgress(stderr, 5*time.Second))
		if err != nil {
			return fmt.Errorf("pull %s (needed by %s): %w", im.Ref, strings.Join(im.Sources, "; "), err)
		}
		what := "already held"
		if p.Fetched > 0 {
			what = fmt.Sprintf("fetched %d blobs, %s", p.Fetched, assetsSize(p.FetchedBytes))
		}
		fmt.Fprintf(out, "[%d/%d] %s %s: %s\n", i+1, len(images), p.Name, shortDigest(p.Digest.String()), what)
		fetched += int64(p.Fetched)
		bytes += p.FetchedBytes
	}
	fmt.Fprintf(out, "images: %d held, %d blobs fetched now (%s)\n", len(images), fetched, assetsSize(bytes))
	for _, u := range unlisted {
		fmt.Fprintf(stderr, "warning: %s: its images cannot be known in advance; pull them into a registry the machines reach yourself\n", u)
	}
	return nil
}

// throttledProgress prints a blob's progress at most every interval.
func throttledProgress(w io.Writer, every time.Duration) func(registry.Progress) {
	var mu sync.Mutex
	last := time.Now()
	return func(p registry.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Complete < p.Total && time.Since(last) < every {
			return
		}
		if p.Total < 8<<20 { // small blobs: no noise
			return
		}
		last = time.Now()
		fmt.Fprintf(w, "  %s %s: %s of %s\n", p.Image, shortDigest(p.Blob.String()), assetsSize(p.Complete), assetsSize(p.Total))
	}
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// listImages prints the image store: every image with platforms, size,
// digest and state; with verify, every blob is hashed again. It returns
// how many are incomplete or corrupt.
func listImages(ctx context.Context, w io.Writer, st *registry.Store, verify bool) (bad int, err error) {
	es, err := st.List()
	if err != nil {
		return 0, err
	}
	if len(es) == 0 {
		fmt.Fprintf(w, "no container images in %s: run `rackboot assets pull`\n", st.Dir())
		return 0, nil
	}
	corrupt := map[string][]string{}
	if verify {
		ps, err := st.Verify(ctx)
		if err != nil {
			return 0, err
		}
		for _, p := range ps {
			corrupt[p.Image] = append(corrupt[p.Image], shortDigest(p.Blob.String()))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tPLATFORMS\tSIZE\tDIGEST\tSTATE")
	for _, e := range es {
		var plats []string
		for _, p := range e.Platforms {
			plats = append(plats, p.OS+"/"+p.Architecture)
		}
		state := "ok"
		if !verify {
			state = "sizes ok"
		}
		switch {
		case len(e.Missing) > 0:
			state, bad = fmt.Sprintf("INCOMPLETE (%d missing)", len(e.Missing)), bad+1
		case len(corrupt[e.Name]) > 0:
			state, bad = "CORRUPT "+strings.Join(corrupt[e.Name], ","), bad+1
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Name, strings.Join(plats, ","), assetsSize(e.Size), shortDigest(e.Digest.String()), state)
	}
	return bad, tw.Flush()
}
