package kubestate

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/dotfile/rackboot/pxe"
)

// SpentTokens keeps each spent config token as a ConfigMap named after the
// token's ID (rackboot-spent-<id>: the token's random nonce, which the
// state directory's spent file lists too; it cannot be turned back into a
// token, which needs the key's HMAC). Create is the decision: the replica
// whose Create succeeds spent the token, AlreadyExists means another did,
// and its pin is read back. The used-up marks (Consume) are one ConfigMap
// changed with RetryOnConflict. It implements pxe.SpentStore.
type SpentTokens struct{ s *Store }

var _ pxe.SpentStore = (*SpentTokens)(nil)

// SpentTokens returns the spent tokens' store.
func (s *Store) SpentTokens() *SpentTokens { return &SpentTokens{s: s} }

func spentName(id string) (string, error) {
	if len(id) != 32 {
		return "", fmt.Errorf("spent token id %q: want 32 hex digits", id)
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", fmt.Errorf("spent token id %q: %w", id, err)
	}
	return SpentPrefix + id, nil
}

func decodePin(cm *corev1.ConfigMap) (pxe.Pin, error) {
	var p pxe.Pin
	if err := json.Unmarshal([]byte(cm.Data[SpentKey]), &p); err != nil {
		return p, fmt.Errorf("configmap %s: spent token: %w", cm.Name, err)
	}
	if n, err := spentName(p.ID); err != nil || n != cm.Name || p.Name == "" || !p.Addr.IsValid() {
		return p, fmt.Errorf("configmap %s: spent token record does not match its name or lacks name and addr", cm.Name)
	}
	return p, nil
}

// Spend implements pxe.SpentStore.
func (t *SpentTokens) Spend(p pxe.Pin) (pxe.Pin, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	name, err := spentName(p.ID)
	if err != nil {
		return pxe.Pin{}, false, err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return pxe.Pin{}, false, fmt.Errorf("encode spent token: %w", err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: t.s.meta(name, ComponentSpent), Data: map[string]string{SpentKey: string(data)}}
	cms := t.s.cs.CoreV1().ConfigMaps(t.s.ns)
	_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	if err == nil {
		return p, true, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return pxe.Pin{}, false, fmt.Errorf("record spent token of %s: %w", p.Name, err)
	}
	got, err := cms.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return pxe.Pin{}, false, fmt.Errorf("read spent token of %s: %w", p.Name, err)
	}
	rec, err := decodePin(got)
	if err != nil {
		return pxe.Pin{}, false, err
	}
	return rec, false, nil
}

// Pins implements pxe.SpentStore. Pins past their token's expiry and
// older than pxe.PinRetention are deleted on the way (by whichever replica
// lists them first).
func (t *SpentTokens) Pins() ([]pxe.Pin, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cms := t.s.cs.CoreV1().ConfigMaps(t.s.ns)
	list, err := cms.List(ctx, metav1.ListOptions{LabelSelector: selector(ComponentSpent)})
	if err != nil {
		return nil, fmt.Errorf("list spent tokens: %w", err)
	}
	now := t.s.now()
	out := make([]pxe.Pin, 0, len(list.Items))
	for i := range list.Items {
		p, err := decodePin(&list.Items[i])
		if err != nil {
			t.s.log.Warn("spent token record skipped", "err", err)
			continue
		}
		if now.After(p.Exp) && now.Sub(p.At) > pxe.PinRetention {
			err := cms.Delete(ctx, list.Items[i].Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.s.log.Warn("delete old spent token record", "object", list.Items[i].Name, "err", err)
			}
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// consumed reads the used-up marks; a missing object is none.
func (t *SpentTokens) consumed(ctx context.Context) (*corev1.ConfigMap, map[string]time.Time, error) {
	cm, err := t.s.getConfigMap(ctx, ConsumedName)
	if errors.Is(err, ErrNotFound) {
		return nil, map[string]time.Time{}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	marks := map[string]time.Time{}
	if data := cm.Data[ConsumedKey]; data != "" {
		if err := json.Unmarshal([]byte(data), &marks); err != nil {
			return nil, nil, fmt.Errorf("configmap %s/%s: %w", t.s.ns, ConsumedName, err)
		}
	}
	return cm, marks, nil
}

// Consumed implements pxe.SpentStore.
func (t *SpentTokens) Consumed(name string) (time.Time, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	_, marks, err := t.consumed(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	at, ok := marks[name]
	return at, ok, nil
}

// Consume implements pxe.SpentStore: the later time wins; marks older than
// every token's lifetime are dropped on the way.
func (t *SpentTokens) Consume(name string, at time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return t.putConsumed(ctx, map[string]time.Time{name: at})
}

// putConsumed merges marks into the used-up marks (the later time wins).
func (t *SpentTokens) putConsumed(ctx context.Context, marks map[string]time.Time) error {
	err := retry.RetryOnConflict(conflictBackoff, func() error {
		cm, cur, err := t.consumed(ctx)
		if err != nil {
			return err
		}
		next := maps.Clone(cur)
		for name, at := range marks {
			if prev, ok := next[name]; !ok || at.After(prev) {
				next[name] = at
			}
		}
		// Tokens live minutes; a mark a day old guards none.
		for n, a := range next {
			if t.s.now().Sub(a) > pxe.PinRetention {
				delete(next, n)
			}
		}
		data, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode used-up tokens: %w", err)
		}
		cms := t.s.cs.CoreV1().ConfigMaps(t.s.ns)
		if cm == nil {
			cm = &corev1.ConfigMap{ObjectMeta: t.s.meta(ConsumedName, ComponentConsumed), Data: map[string]string{ConsumedKey: string(data)}}
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("configmaps"), ConsumedName, err)
			}
			return err
		}
		if cm.Data[ConsumedKey] == string(data) {
			return nil
		}
		cm.Data = map[string]string{ConsumedKey: string(data)}
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("record used-up config tokens: %w", err)
	}
	return nil
}
