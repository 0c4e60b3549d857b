package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"

	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/rackedit"
	"github.com/dotfile/rackboot/upgrade"
)

// rackboot upgrade --kube: the secrets bundle from the cluster's Secret,
// upgrade.json in the ConfigMap rackboot-upgrade (so --resume works from
// another laptop), and the new talosVersion written into the rack file's
// ConfigMap.

// kubeUpgradeState keeps upgrade.json in the cluster (upgrade.StateStore).
type kubeUpgradeState struct{ doc *kubestate.Document }

// ReadState implements upgrade.StateStore.
func (k kubeUpgradeState) ReadState() ([]byte, bool, error) {
	ctx, cancel := kubeCtx(context.Background())
	defer cancel()
	return k.doc.Read(ctx)
}

// WriteState implements upgrade.StateStore. It does not take the
// command's context: an interrupted upgrade must still record where it
// stopped.
func (k kubeUpgradeState) WriteState(data []byte) error {
	ctx, cancel := kubeCtx(context.Background())
	defer cancel()
	return k.doc.Write(ctx, data)
}

// Where implements upgrade.StateStore.
func (k kubeUpgradeState) Where() string { return k.doc.Where() }

// upgradeState is where upgrade.json is kept: the state directory, or the
// cluster under --kube.
func (a *app) upgradeState() (upgrade.StateStore, error) {
	if a.kube == nil {
		return upgrade.DirStore(a.StateDir()), nil
	}
	doc, err := a.kube.Document(upgrade.StateFile)
	if err != nil {
		return nil, err
	}
	return kubeUpgradeState{doc: doc}, nil
}

// upgradeSecrets reads the cluster's secrets bundle, never creating it:
// from the state directory, or the cluster's Secret under --kube.
func (a *app) upgradeSecrets(ctx context.Context) (*secrets.Bundle, error) {
	if a.kube != nil {
		ctx, cancel := kubeCtx(ctx)
		defer cancel()
		b, err := a.kube.Secrets(ctx)
		if err != nil {
			return nil, &exitError{code: 1, err: fmt.Errorf("--kube: %w", err)}
		}
		return b, nil
	}
	path := filepath.Join(a.StateDir(), profiles.SecretsFile)
	if _, err := os.Stat(path); err != nil {
		return nil, &exitError{code: 1, err: fmt.Errorf("no cluster secrets at %s: the upgrade talks to the running cluster with them; is --state right?", path)}
	}
	return profiles.LoadSecrets(path)
}

// writeTalosVersion sets talosVersion in the rack file (rackedit: only
// that value changes, comments kept): the file, or under --kube its
// ConfigMap (conflict safe). It returns where it wrote.
func (a *app) writeTalosVersion(ctx context.Context, version string) (string, error) {
	if a.kube == nil {
		return a.rackPath, setRackTalosVersion(a.rackPath, version)
	}
	ctx, cancel := kubeCtx(ctx)
	defer cancel()
	err := a.kube.UpdateRackFile(ctx, func(old []byte) ([]byte, error) { return rackedit.SetTalosVersion(old, version) })
	// serve --kube reads the rack when it starts.
	return fmt.Sprintf("%s (the replicas read it when they start: kubectl -n %s rollout restart deployment/%s)",
		a.rackWhere(), a.kube.Namespace(), handoff.Name), err
}
