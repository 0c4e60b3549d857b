package kubestate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// ErrSecretsDiffer is returned (wrapped) by Import and Export when the
// other side already holds a different secrets bundle: replacing it would
// lock its owner out of the cluster those keys opened.
var ErrSecretsDiffer = errors.New("a different secrets bundle is already there")

// secretFile is a state directory file kept in a Secret.
type secretFile struct{ file, name, key string }

var secretFiles = []secretFile{
	{profiles.SecretsFile, SecretsName, SecretsKey},
	{pxe.TokenKeyFile, TokenKeyName, TokenKeyKey},
	{profiles.BMCPasswordsFile, BMCPasswordsName, BMCPasswordsKey},
}

// Import copies the state directory (and the rack file, unless rackFile is
// "") into the namespace: the secrets bundle, the config-token key and the
// BMC passwords into Secrets byte for byte, the lease table, every machine
// record and the spent config tokens into ConfigMaps. Files that are not
// there are skipped. It is idempotent: an object that already holds the
// same content is not written (its resourceVersion stays). A secrets bundle
// in the cluster that differs from the state directory's is never replaced
// (ErrSecretsDiffer); the other objects take the state directory's content.
func (s *Store) Import(ctx context.Context, stateDir, rackFile string) error {
	if rackFile != "" {
		data, err := os.ReadFile(rackFile)
		if err != nil {
			return fmt.Errorf("import the rack file: %w", err)
		}
		if _, err := profiles.Load(rackFile, data); err != nil {
			return fmt.Errorf("import the rack file: %w", err)
		}
		if err := s.putConfigMap(ctx, RackName, ComponentRack, RackKey, data); err != nil {
			return fmt.Errorf("import %s: %w", rackFile, err)
		}
	}
	if err := s.importSecrets(ctx, stateDir); err != nil {
		return err
	}
	if err := s.importLeases(ctx, stateDir); err != nil {
		return err
	}
	if err := s.importMachines(ctx, stateDir); err != nil {
		return err
	}
	return s.importSpent(ctx, stateDir)
}

// readState reads a state file; ok is false when it is not there.
func readState(stateDir, name string) (data []byte, ok bool, err error) {
	data, err = os.ReadFile(filepath.Join(stateDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("import: %w", err)
	}
	return data, true, nil
}

func (s *Store) importSecrets(ctx context.Context, stateDir string) error {
	for _, f := range secretFiles {
		path := filepath.Join(stateDir, f.file)
		data, ok, err := readState(stateDir, f.file)
		if err != nil {
			return err
		}
		if !ok { // not there: the next file may be
			continue
		}
		switch f.file { // check what the cluster will read
		case profiles.SecretsFile:
			_, err = profiles.LoadSecrets(path)
		case pxe.TokenKeyFile:
			_, err = pxe.ParseTokenKey(data)
		case profiles.BMCPasswordsFile:
			_, err = profiles.LoadBMCPasswords(stateDir, func(string) string { return "" })
		}
		if err != nil {
			return fmt.Errorf("import %s: %w", path, err)
		}
		if err := s.putSecret(ctx, f, data); err != nil {
			return fmt.Errorf("import %s: %w", path, err)
		}
	}
	return nil
}

func (s *Store) importLeases(ctx context.Context, stateDir string) error {
	data, ok, err := readState(stateDir, LeasesKey)
	if err != nil || !ok {
		return err
	}
	if _, err := pxe.ParseLeases(data); err != nil {
		return fmt.Errorf("import DHCP leases: %w", err)
	}
	if err := checkSize("the DHCP lease table", len(data)); err != nil {
		return fmt.Errorf("import DHCP leases: %w", err)
	}
	if err := s.putConfigMap(ctx, LeasesName, ComponentLeases, LeasesKey, data); err != nil {
		return fmt.Errorf("import DHCP leases: %w", err)
	}
	return nil
}

func (s *Store) importMachines(ctx context.Context, stateDir string) error {
	data, ok, err := readState(stateDir, inventory.FileName)
	if err != nil || !ok {
		return err
	}
	ms, err := inventory.DecodeFile(data)
	if err != nil {
		return fmt.Errorf("import machine states: %s: %w", inventory.FileName, err)
	}
	b := s.Machines()
	for _, m := range ms {
		if _, err := encodeMachine(m); err != nil {
			return fmt.Errorf("import machine states: %w", err)
		}
		_, err = b.Update(ctx, m.Key, func(cur *inventory.Machine) bool {
			if sameRecord(*cur, m) {
				return false
			}
			next := m
			if cur.Revision > 0 {
				next.Revision = cur.Revision + 1 // replicas watching take it in
			}
			*cur = next
			return true
		})
		if err != nil {
			return fmt.Errorf("import machine states: %w", err)
		}
	}
	return nil
}

// sameRecord reports whether a and b are the same record, revisions aside.
func sameRecord(a, b inventory.Machine) bool {
	a.Revision, b.Revision = 0, 0
	ea, errA := encodeMachine(a)
	eb, errB := encodeMachine(b)
	return errA == nil && errB == nil && maps.Equal(ea, eb)
}

func (s *Store) importSpent(ctx context.Context, stateDir string) error {
	data, ok, err := readState(stateDir, pxe.SpentFile)
	if err != nil || !ok {
		return err
	}
	pins, consumed, err := pxe.ParseSpentFile(data)
	if err != nil {
		return fmt.Errorf("import spent config tokens: %w", err)
	}
	spent := s.SpentTokens()
	for _, p := range pins {
		if _, _, err := spent.Spend(p); err != nil {
			return fmt.Errorf("import spent config tokens: %w", err)
		}
	}
	if len(consumed) > 0 {
		if err := spent.putConsumed(ctx, consumed); err != nil {
			return fmt.Errorf("import spent config tokens: %w", err)
		}
	}
	return nil
}

// putConfigMap makes the ConfigMap name hold exactly {key: data}, writing
// nothing when it does already.
func (s *Store) putConfigMap(ctx context.Context, name, component, key string, data []byte) error {
	want := map[string]string{key: string(data)}
	return retry.RetryOnConflict(conflictBackoff, func() error {
		cms := s.cs.CoreV1().ConfigMaps(s.ns)
		cm, err := cms.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: s.meta(name, component), Data: want}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("configmaps"), name, err)
			}
			return err
		}
		if err != nil {
			return fmt.Errorf("read configmap %s/%s: %w", s.ns, name, err)
		}
		if maps.Equal(cm.Data, want) && len(cm.BinaryData) == 0 {
			return nil
		}
		cm.Data, cm.BinaryData = want, nil
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
}

// putSecret makes the Secret f.name hold exactly {f.key: data}, writing
// nothing when it does already. A different secrets bundle is refused.
func (s *Store) putSecret(ctx context.Context, f secretFile, data []byte) error {
	return retry.RetryOnConflict(conflictBackoff, func() error {
		secs := s.cs.CoreV1().Secrets(s.ns)
		sec, err := secs.Get(ctx, f.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = secs.Create(ctx, &corev1.Secret{ObjectMeta: s.meta(f.name, ComponentSecrets),
				Type: corev1.SecretTypeOpaque, Data: map[string][]byte{f.key: data}}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("secrets"), f.name, err)
			}
			return err
		}
		if err != nil {
			return fmt.Errorf("read secret %s/%s: %w", s.ns, f.name, err)
		}
		if len(sec.Data) == 1 && bytes.Equal(sec.Data[f.key], data) {
			return nil
		}
		if f.name == SecretsName {
			return fmt.Errorf("secret %s/%s: %w; nothing was changed (delete the secret yourself only if the cluster it opened is gone)", s.ns, f.name, ErrSecretsDiffer)
		}
		sec.Data, sec.StringData = map[string][]byte{f.key: data}, nil
		_, err = secs.Update(ctx, sec, metav1.UpdateOptions{})
		return err
	})
}

// Export copies the namespace's state into stateDir (made 0700 when
// missing) and the rack into rackFile (unless ""): the files Import reads,
// byte for byte, each written atomically, secret files 0600. Spent config
// tokens stay in the cluster (tokens live minutes). A secrets bundle in
// stateDir that differs from the cluster's is never replaced
// (ErrSecretsDiffer). Objects not in the cluster leave their files alone.
func (s *Store) Export(ctx context.Context, stateDir, rackFile string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if rackFile != "" {
		data, err := s.RackFile(ctx)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return fmt.Errorf("export: %w", err)
		default:
			if err := atomicfile.Write(rackFile, data, 0o644); err != nil {
				return fmt.Errorf("export the rack file: %w", err)
			}
		}
	}
	for _, f := range secretFiles {
		data, err := s.secretData(ctx, f.name, f.key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		if err := exportFile(stateDir, f.file, data, f.name == SecretsName); err != nil {
			return err
		}
	}
	if err := s.exportLeases(ctx, stateDir); err != nil {
		return err
	}
	ms, err := s.Machines().Load(ctx)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if len(ms) == 0 {
		return nil
	}
	data, err := inventory.EncodeFile(ms)
	if err != nil {
		return fmt.Errorf("export machine states: %w", err)
	}
	return exportFile(stateDir, inventory.FileName, data, false)
}

func (s *Store) exportLeases(ctx context.Context, stateDir string) error {
	cm, err := s.getConfigMap(ctx, LeasesName)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return exportFile(stateDir, LeasesKey, []byte(cm.Data[LeasesKey]), false)
}

// exportFile writes one state file (0600). keep refuses to replace a
// different existing file.
func exportFile(stateDir, name string, data []byte, keep bool) error {
	path := filepath.Join(stateDir, name)
	if keep {
		old, err := os.ReadFile(path)
		switch {
		case err == nil && bytes.Equal(old, data):
			return nil
		case err == nil:
			return fmt.Errorf("export: %s: %w; nothing was changed (move it away yourself if you really mean to take the cluster's)", path, ErrSecretsDiffer)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("export: %w", err)
		}
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	return nil
}
