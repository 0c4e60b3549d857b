package upgrade

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// StateStore keeps upgrade.json: in the state directory by default
// (DirStore), in a Kubernetes ConfigMap with rackboot upgrade --kube, so
// that --resume works from another laptop.
type StateStore interface {
	// ReadState returns upgrade.json's bytes; ok is false when there is
	// none. It creates nothing.
	ReadState() (data []byte, ok bool, err error)
	// WriteState replaces it with data.
	WriteState(data []byte) error
	// Where names it for messages: a path, or the ConfigMap.
	Where() string
}

// DirStore is upgrade.json in a state directory.
type DirStore string

// ReadState implements StateStore.
func (d DirStore) ReadState() ([]byte, bool, error) {
	data, err := os.ReadFile(d.Where())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read upgrade state: %w", err)
	}
	return data, true, nil
}

// WriteState implements StateStore: atomically, 0600.
func (d DirStore) WriteState(data []byte) error {
	if err := atomicfile.Write(d.Where(), data, 0o600); err != nil {
		return fmt.Errorf("write upgrade state: %w", err)
	}
	return nil
}

// Where implements StateStore: the file's path.
func (d DirStore) Where() string { return filepath.Join(string(d), StateFile) }

// LoadState reads and checks upgrade.json from st; none is (nil, nil).
func LoadState(st StateStore) (*State, error) {
	data, ok, err := st.ReadState()
	if err != nil || !ok {
		return nil, err
	}
	s, err := ParseState(data)
	if err != nil {
		return nil, fmt.Errorf("upgrade state %s is unreadable (left untouched; fix or remove it): %w", st.Where(), err)
	}
	return s, nil
}
