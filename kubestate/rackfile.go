package kubestate

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/util/retry"
)

// UpdateRackFile changes the rack file in the ConfigMap rackboot-rack:
// edit gets the bytes stored now and returns the new ones; on a conflict
// (someone else changed it in between) edit runs again on the newer bytes.
// edit returning its input unchanged writes nothing. The ConfigMap must
// exist (rackboot handoff makes it).
func (s *Store) UpdateRackFile(ctx context.Context, edit func(old []byte) ([]byte, error)) error {
	return retry.RetryOnConflict(conflictBackoff, func() error {
		cm, err := s.getConfigMap(ctx, RackName)
		if err != nil {
			return fmt.Errorf("rack file: %w (rackboot handoff puts it there)", err)
		}
		old, ok := cm.Data[RackKey]
		if !ok {
			return fmt.Errorf("rack file: configmap %s/%s has no key %s", s.ns, RackName, RackKey)
		}
		out, err := edit([]byte(old))
		if err != nil {
			return err
		}
		if string(out) == old {
			return nil
		}
		if err := checkSize("the rack file", len(out)); err != nil {
			return err
		}
		cm.Data[RackKey] = string(out)
		if _, err := s.cs.CoreV1().ConfigMaps(s.ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return err // a conflict is retried
		}
		return nil
	})
}

// WatchRackFile calls seen with the rack file's bytes as stored now, then
// each time the ConfigMap rackboot-rack changes (machine adopt --kube,
// kubectl edit), until ctx ends. A watch the server closes, or one that
// fails, is started again from a fresh read (seen may then get the same
// bytes again). It returns ctx's error.
func (s *Store) WatchRackFile(ctx context.Context, seen func(data []byte)) error {
	for {
		err := s.watchRackOnce(ctx, seen)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := watchResume
		if err != nil {
			wait = watchRetry
			s.log.Warn("watch the rack file: reading again", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

func (s *Store) watchRackOnce(ctx context.Context, seen func([]byte)) error {
	cm, err := s.getConfigMap(ctx, RackName)
	if err != nil {
		return err
	}
	if data, ok := cm.Data[RackKey]; ok {
		seen([]byte(data))
	}
	w, err := s.cs.CoreV1().ConfigMaps(s.ns).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", RackName).String(), ResourceVersion: cm.ResourceVersion})
	if err != nil {
		return fmt.Errorf("watch configmap %s/%s: %w", s.ns, RackName, err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		switch ev.Type {
		case watch.Added, watch.Modified:
			if cm, ok := ev.Object.(*corev1.ConfigMap); ok {
				if data, ok := cm.Data[RackKey]; ok {
					seen([]byte(data))
				}
			}
		case watch.Error:
			return fmt.Errorf("watch configmap %s/%s: %w", s.ns, RackName, apierrors.FromObject(ev.Object))
		}
	}
	return nil
}
