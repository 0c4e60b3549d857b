package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

// rackWatch is the replica's service that takes a changed rack file in
// (machine adopt --kube, upgrade --kube, kubectl edit of the ConfigMap
// rackboot-rack): the same reload as the laptop's /rack/reload (machines
// and the Talos and Kubernetes versions; other cluster settings are
// refused, logged, and need a restart of the replicas). The first bytes
// the watch sees are taken in too: the rack may have changed since
// openKube read it. The control socket's /rack/reload (reload) reads the
// ConfigMap and takes it in the same way, at once.
func (ks *kubeServe) rackWatch(live *liveRack, store *inventory.Store) pxe.Option {
	ks.rackIn = &rackIntake{where: ks.rackSource(), live: live, store: store}
	return pxe.WithService("rack-watch", func(ctx context.Context) error {
		err := ks.watchRack(ctx, live, store)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
}

// watchRack takes each version of the rack ConfigMap in until ctx ends.
func (ks *kubeServe) watchRack(ctx context.Context, live *liveRack, store *inventory.Store) error {
	if ks.rackIn == nil {
		ks.rackIn = &rackIntake{where: ks.rackSource(), live: live, store: store}
	}
	in := ks.rackIn
	return ks.state.WatchRackFile(ctx, func(data []byte) {
		if _, err := in.take(data); err != nil {
			ks.log.Warn("the rack file changed but was not taken in", "err", err)
		}
	})
}

// reloadTimeout bounds the control socket's read of the rack ConfigMap.
const reloadTimeout = 15 * time.Second

// reload answers the control socket's rack reload (machine remove,
// upgrade): the ConfigMap read now and taken in as the watch does; the
// answer says what changed.
func (ks *kubeServe) reload() (string, error) {
	if ks.rackIn == nil {
		return "", errors.New("serve --kube has not started its rack watch yet: try again in a moment")
	}
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	data, err := ks.state.RackFile(ctx)
	if err != nil {
		return "", fmt.Errorf("reload the rack: %w", err)
	}
	return ks.rackIn.take(data)
}

// rackIntake takes the rack ConfigMap's bytes in, from the watch and the
// control socket alike, one at a time.
type rackIntake struct {
	where string // configmap NAMESPACE/rackboot-rack
	live  *liveRack
	store *inventory.Store

	mu   sync.Mutex
	last []byte // the bytes last taken in
}

// take reloads the live rack from data unless it is what was last taken
// in, and says what changed. A rack that is refused (not valid, other
// cluster settings) is an error, and is tried again when it comes again.
func (in *rackIntake) take(data []byte) (string, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.last != nil && bytes.Equal(data, in.last) {
		return fmt.Sprintf("rack unchanged: %s is the rack this replica serves (%d machines)", in.where, len(in.live.Rack().Machines)), nil
	}
	msg, err := in.live.reloadData(in.where, data, in.store)
	if err != nil {
		return "", err
	}
	in.last = bytes.Clone(data)
	return msg, nil
}
