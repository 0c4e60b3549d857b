package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// snapshot is the store's content as the server looks it up: tags by
// name, and per repository the digests that belong to its images.
type snapshot struct {
	tags  map[string]v1.Descriptor             // "registry.k8s.io/pause:3.10" -> manifest
	repos map[string]map[v1.Hash]v1.Descriptor // "registry.k8s.io/pause" -> digest -> descriptor
	owner map[v1.Hash]string                   // digest -> an image name holding it (for logs)
}

type snapshotKey struct {
	size  int64
	mtime time.Time
	ino   uint64
}

type snapshotCache struct {
	mu  sync.Mutex
	key snapshotKey
	sn  *snapshot
}

// snapshot returns the current snapshot, rebuilt when index.json changed
// (another process pulled meanwhile).
func (s *Store) snapshot() (*snapshot, error) {
	var key snapshotKey
	fi, err := os.Stat(filepath.Join(s.dir, indexFile))
	switch {
	case err == nil:
		key = snapshotKey{size: fi.Size(), mtime: fi.ModTime()}
		_, key.ino = fileID(fi)
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("read image store index: %w", err)
	}
	s.snap.mu.Lock()
	defer s.snap.mu.Unlock()
	if s.snap.sn != nil && s.snap.key == key {
		return s.snap.sn, nil
	}
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	sn := &snapshot{tags: map[string]v1.Descriptor{}, repos: map[string]map[v1.Hash]v1.Descriptor{}, owner: map[v1.Hash]string{}}
	for _, d := range idx.Manifests {
		n := d.Annotations[AnnotationRefName]
		r, err := ParseRef(n)
		if err != nil {
			s.log.Warn("image store entry with a name that is no image reference; skipped", "name", n)
			continue
		}
		plain := d
		plain.Annotations = nil
		if r.Tag != "" {
			sn.tags[r.Repository()+":"+r.Tag] = plain
		}
		set := sn.repos[r.Repository()]
		if set == nil {
			set = map[v1.Hash]v1.Descriptor{}
			sn.repos[r.Repository()] = set
		}
		c := s.closure(n, d, entryPlatforms(d))
		for _, b := range c.blobs {
			b.Annotations, b.Platform, b.URLs = nil, nil, nil
			set[b.Digest] = b
			if _, ok := sn.owner[b.Digest]; !ok {
				sn.owner[b.Digest] = n
			}
		}
	}
	s.snap.key, s.snap.sn = key, sn
	return sn, nil
}

func (sn *snapshot) resolve(repo, reference string) (v1.Descriptor, error) {
	if strings.HasPrefix(reference, "sha256:") {
		h, err := v1.NewHash(reference)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("%s@%s: %w", repo, reference, ErrNotFound)
		}
		d, ok := sn.repos[repo][h]
		if !ok {
			return v1.Descriptor{}, fmt.Errorf("%s@%s: %w", repo, reference, ErrNotFound)
		}
		return d, nil
	}
	d, ok := sn.tags[repo+":"+reference]
	if !ok {
		return v1.Descriptor{}, fmt.Errorf("%s:%s: %w", repo, reference, ErrNotFound)
	}
	return d, nil
}

// Owner names an image holding blob d (for log lines), "" if none.
func (s *Store) owner(d v1.Hash) string {
	sn, err := s.snapshot()
	if err != nil {
		return ""
	}
	return sn.owner[d]
}

// HasRepository reports whether any stored image is in repo (fully
// qualified), so the server can tell NAME_UNKNOWN from MANIFEST_UNKNOWN.
func (s *Store) HasRepository(repo string) bool {
	sn, err := s.snapshot()
	return err == nil && sn.repos[repo] != nil
}
