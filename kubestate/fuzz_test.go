package kubestate

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FuzzDecodeMachine: a machine record read from a ConfigMap (anyone with
// write access to the namespace can put anything there) never panics, and
// one accepted is named after its key and encodes again.
func FuzzDecodeMachine(f *testing.F) {
	f.Add("formula", `{"key":"formula","name":"formula","stage":"installed","installed":true,"firstSeen":"2026-05-01T12:00:00Z","lastSeen":"2026-05-01T12:00:00Z","revision":3}`)
	f.Add("rackboot-machine-x-00", `{"key":"52:54:00:12:34:56","stage":"dhcp"}`)
	f.Add("formula", `{"key":"formula","addr":"10.99.0.21","timeline":[{"time":"2026-05-01T12:00:00Z","stage":"dhcp"}]}`)
	f.Add("formula", `[]`)
	f.Fuzz(func(t *testing.T, key, data string) {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: MachineObjectName(key)}, Data: map[string]string{MachineKey: data}}
		m, err := decodeMachine(cm)
		if err != nil {
			return
		}
		if MachineObjectName(m.Key) != cm.Name {
			t.Fatalf("record %q accepted under object %s", m.Key, cm.Name)
		}
		if _, err := encodeMachine(m); err != nil && len(data) < MaxObjectBytes {
			t.Fatalf("accepted record does not encode: %v", err)
		}
	})
}

// FuzzDecodePin: a spent token read from a ConfigMap never panics, and one
// accepted has the name, address and id its object is named after.
func FuzzDecodePin(f *testing.F) {
	id := "00112233445566778899aabbccddeeff"
	f.Add(id, `{"id":"`+id+`","name":"formula","addr":"10.99.0.21","exp":"2026-05-01T12:10:00Z","at":"2026-05-01T12:00:00Z"}`)
	f.Add(id, `{"id":"`+id+`","name":"formula","addr":"::ffff:10.99.0.21","mac":"52:54:00:12:34:56"}`)
	f.Add("zz", `{}`)
	f.Fuzz(func(t *testing.T, id, data string) {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: SpentPrefix + id}, Data: map[string]string{SpentKey: data}}
		p, err := decodePin(cm)
		if err != nil {
			return
		}
		if p.ID != id || p.Name == "" || !p.Addr.IsValid() {
			t.Fatalf("accepted pin %+v under object %s", p, cm.Name)
		}
	})
}
