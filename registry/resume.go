package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// An opener opens a blob's bytes from offset off. start is where the
// returned stream begins: off when the source honoured the offset, 0 when
// it sends the whole blob instead (a registry that ignores Range).
type opener func(off int64) (rc io.ReadCloser, start int64, err error)

// whole is an opener for a source that can only give the whole blob.
func whole(open func() (io.ReadCloser, error)) opener {
	return func(int64) (io.ReadCloser, int64, error) {
		rc, err := open()
		return rc, 0, err
	}
}

// WithKeychain makes every upstream request, ranged blob requests
// included, authenticate with kc (e.g. authn.DefaultKeychain: the user's
// docker login). The default is anonymous.
func WithKeychain(kc authn.Keychain) Option {
	return func(s *Store) {
		s.keychain = kc
		s.remoteOpts = append(s.remoteOpts, remote.WithAuthFromKeychain(kc))
	}
}

// rangeOpener fetches a layer of repo with an HTTP Range request from
// offset on, so an interrupted download goes on where it stopped (the
// distribution spec lets a registry serve blobs with ranges; Docker Hub,
// ghcr.io, registry.k8s.io's and CNCF distribution's storage do). From
// offset 0 it is go-containerregistry's own fetch. The request goes
// through go-containerregistry's transport (token exchange, the same
// credentials as remote); redirects to blob storage keep the Range header.
func (p *puller) rangeOpener(d v1.Hash) opener {
	full := p.opener(d)
	return func(off int64) (io.ReadCloser, int64, error) {
		if off <= 0 {
			rc, err := full()
			return rc, 0, err
		}
		rc, start, err := p.s.openRange(p.ctx, p.repo, d, off)
		if err != nil {
			// The range request failed outright: fall back to the whole
			// blob rather than give up on a resumable download.
			p.s.log.Info("ranged blob request failed; fetching the whole blob", "blob", d.String(), "offset", off, "error", err)
			rc, err := full()
			return rc, 0, err
		}
		return rc, start, nil
	}
}

// openRange GETs blob d of repo with Range: bytes=off-. A 206 answer whose
// Content-Range starts at off resumes there; a 200 is the whole blob
// (start 0); anything else is an error naming the registry.
func (s *Store) openRange(ctx context.Context, repo name.Repository, d v1.Hash, off int64) (io.ReadCloser, int64, error) {
	auth := authn.Anonymous
	if s.keychain != nil {
		a, err := s.keychain.Resolve(repo)
		if err != nil {
			return nil, 0, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
		}
		auth = a
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, remote.DefaultTransport, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, 0, fmt.Errorf("registry %s: %w", repo.RegistryStr(), err)
	}
	url := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), d)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, 0, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.Body, 0, nil
	case http.StatusPartialContent:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); ok && start == off {
			return resp.Body, off, nil
		}
		resp.Body.Close()
		return nil, 0, fmt.Errorf("registry %s answered a range from %d with Content-Range %q", repo.RegistryStr(), off, resp.Header.Get("Content-Range"))
	default:
		resp.Body.Close()
		return nil, 0, fmt.Errorf("registry %s answered %s to a ranged GET of %s", repo.RegistryStr(), resp.Status, d)
	}
}

// contentRangeStart reads the first byte position of a Content-Range
// header ("bytes 100-199/200", "bytes 100-199/*").
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil && n >= 0
}
