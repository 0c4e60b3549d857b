package kubestate

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// RackFile returns the rack file's bytes from the ConfigMap rackboot-rack.
func (s *Store) RackFile(ctx context.Context) ([]byte, error) {
	cm, err := s.getConfigMap(ctx, RackName)
	if err != nil {
		return nil, fmt.Errorf("rack file: %w (rackboot handoff puts it there)", err)
	}
	data, ok := cm.Data[RackKey]
	if !ok {
		return nil, fmt.Errorf("rack file: configmap %s/%s has no key %s", s.ns, RackName, RackKey)
	}
	return []byte(data), nil
}

// Rack loads the rack file from the ConfigMap rackboot-rack.
func (s *Store) Rack(ctx context.Context) (*profiles.Rack, error) {
	data, err := s.RackFile(ctx)
	if err != nil {
		return nil, err
	}
	r, err := profiles.Load("configmap/"+s.ns+"/"+RackName, data)
	if err != nil {
		return nil, fmt.Errorf("rack file in configmap %s/%s: %w", s.ns, RackName, err)
	}
	return r, nil
}

// secretData returns one key of a Secret; ErrNotFound when the Secret is
// not there.
func (s *Store) secretData(ctx context.Context, name, key string) ([]byte, error) {
	sec, err := s.getSecret(ctx, name)
	if err != nil {
		return nil, err
	}
	data, ok := sec.Data[key]
	if !ok {
		return nil, fmt.Errorf("secret %s/%s has no key %s", s.ns, name, key)
	}
	return data, nil
}

// SecretsFile returns the secrets bundle's bytes (secrets.yaml) from the
// Secret rackboot-secrets. It never makes one: a cluster's secrets come
// from the laptop that made them (rackboot handoff).
func (s *Store) SecretsFile(ctx context.Context) ([]byte, error) {
	data, err := s.secretData(ctx, SecretsName, SecretsKey)
	if err != nil {
		return nil, fmt.Errorf("the cluster's secrets bundle: %w (rackboot handoff copies it from the laptop's state directory)", err)
	}
	return data, nil
}

// Secrets loads the secrets bundle from the Secret rackboot-secrets.
func (s *Store) Secrets(ctx context.Context) (*secrets.Bundle, error) {
	data, err := s.SecretsFile(ctx)
	if err != nil {
		return nil, err
	}
	b, err := profiles.ParseSecrets(data, s.now)
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", s.ns, SecretsName, err)
	}
	return b, nil
}

// BMCPasswords loads the BMC passwords from the Secret
// rackboot-bmc-passwords (none there: no passwords but the environment's).
func (s *Store) BMCPasswords(ctx context.Context, getenv func(string) string) (*profiles.BMCPasswords, error) {
	data, err := s.secretData(ctx, BMCPasswordsName, BMCPasswordsKey)
	if errors.Is(err, ErrNotFound) {
		data, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	p, err := profiles.NewBMCPasswords(data, getenv)
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", s.ns, BMCPasswordsName, err)
	}
	return p, nil
}

// TokenKey returns the config-token key from the Secret rackboot-token-key,
// making it (32 random bytes) on first use. Every replica gets the same
// key: when two make one at once, the first Create wins and the other
// reads it.
func (s *Store) TokenKey(ctx context.Context) ([]byte, error) {
	key, err := s.secretData(ctx, TokenKeyName, TokenKeyKey)
	if errors.Is(err, ErrNotFound) {
		key, err = s.createTokenKey(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("config token key: %w", err)
	}
	if _, err := pxe.ParseTokenKey(key); err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w: the key is damaged; delete the secret to make a new one (machines mid-boot must then boot again)", s.ns, TokenKeyName, err)
	}
	return key, nil
}

func (s *Store) createTokenKey(ctx context.Context) ([]byte, error) {
	key := make([]byte, pxe.TokenKeyLen)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, fmt.Errorf("make config token key: %w", err)
	}
	sec := &corev1.Secret{ObjectMeta: s.meta(TokenKeyName, ComponentSecrets), Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{TokenKeyKey: key}}
	_, err := s.cs.CoreV1().Secrets(s.ns).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) { // another replica made it first
		return s.secretData(ctx, TokenKeyName, TokenKeyKey)
	}
	if err != nil {
		return nil, fmt.Errorf("create secret %s/%s: %w", s.ns, TokenKeyName, err)
	}
	return key, nil
}

// Tokens returns config tokens keyed by the shared key (TokenKey) with
// spent tokens kept in the cluster, for pxe.Config.Tokens.
func (s *Store) Tokens(ctx context.Context, cfg pxe.TokenConfig) (*pxe.Tokens, error) {
	key, err := s.TokenKey(ctx)
	if err != nil {
		return nil, err
	}
	return pxe.NewSharedTokens(key, s.SpentTokens(), cfg)
}

// Inventory opens the machine inventory with its records in the cluster
// (inventory.OpenBackend). Run Machines().Watch(ctx, store.Observe) to see
// other replicas' changes.
func (s *Store) Inventory(ctx context.Context, opts ...inventory.Option) (*inventory.Store, error) {
	return inventory.OpenBackend(ctx, s.Machines(), opts...)
}
