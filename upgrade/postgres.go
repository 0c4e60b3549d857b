package upgrade

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/dotfile/rackboot/bundles/cnpg"
)

// PostgresClusterGVR is CloudNativePG's Cluster resource.
var PostgresClusterGVR = schema.GroupVersionResource{Group: "postgresql.cnpg.io", Version: "v1", Resource: "clusters"}

// PostgresGate: CloudNativePG's Cluster has every instance ready and a
// healthy primary (the bundles' gates, cnpg.InstancesReady and
// cnpg.HasPrimary, read the same way). Draining a node moves or restarts
// an instance; CloudNativePG's own budgets keep the primary, and this gate
// keeps the next node from going while a replica is still catching up.
func PostgresGate(dyn dynamic.Interface, namespace, name string) Gate {
	return Gate{
		Name: fmt.Sprintf("PostgreSQL (Cluster %s/%s): every instance ready, a healthy primary", namespace, name),
		Check: func(ctx context.Context) (bool, string) {
			obj, err := dyn.Resource(PostgresClusterGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				return false, fmt.Sprintf("no PostgreSQL Cluster %s/%s: is the database bundle applied (`rackboot bundles apply`)?", namespace, name)
			case err != nil:
				return false, fmt.Sprintf("read PostgreSQL Cluster %s/%s: %v", namespace, name, err)
			}
			if ok, why := cnpg.InstancesReady(obj); !ok {
				return false, why
			}
			return cnpg.HasPrimary(obj)
		},
	}
}
