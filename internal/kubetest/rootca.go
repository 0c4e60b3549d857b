package kubetest

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// PublishRootCA writes the kube-root-ca.crt ConfigMap (the API server's CA)
// into a namespace, which a pod's service-account token volume reads. In a
// cluster the controller-manager's root-ca-cert-publisher does this; none
// runs here, so the test does what it would.
func (e *Env) PublishRootCA(ctx context.Context, namespace string) error {
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(e.caPEM)}}
	if _, err := cs.CoreV1().ConfigMaps(namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("publish kube-root-ca.crt in %s: %w", namespace, err)
	}
	return nil
}
