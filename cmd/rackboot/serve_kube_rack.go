package main

import (
	"bytes"
	"context"
	"errors"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/pxe"
)

// rackWatch is the replica's service that takes a changed rack file in
// (machine adopt --kube, kubectl edit of the ConfigMap rackboot-rack):
// the same reload as the laptop's /rack/reload, machines only; a change
// of the cluster settings (talosVersion among them) is logged and needs a
// restart of the replicas. The first bytes the watch sees are taken in
// too: the rack may have changed since openKube read it.
func (ks *kubeServe) rackWatch(live *liveRack, store *inventory.Store) pxe.Option {
	return pxe.WithService("rack-watch", func(ctx context.Context) error {
		err := ks.watchRack(ctx, live, store)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
}

func (ks *kubeServe) watchRack(ctx context.Context, live *liveRack, store *inventory.Store) error {
	where := "configmap " + ks.state.Namespace() + "/" + kubestate.RackName
	var last []byte
	return ks.state.WatchRackFile(ctx, func(data []byte) {
		if last != nil && bytes.Equal(data, last) {
			return
		}
		last = bytes.Clone(data)
		if _, err := live.reloadData(where, data, store); err != nil {
			ks.log.Warn("the rack file changed but was not taken in", "err", err)
		}
	})
}
