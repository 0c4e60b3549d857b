//go:build !unix

package registry

import (
	"fmt"
	"os"
)

// lock serializes writers within this process only.
func (s *Store) lock() (func(), error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create image store %s: %w", s.dir, err)
	}
	return func() {}, nil
}
