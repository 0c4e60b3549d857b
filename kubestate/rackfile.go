package kubestate

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
