package rackedit

import "github.com/dotfile/rackboot/profiles"

// SetKubernetesVersion sets cluster.kubernetesVersion in place (`rackboot
// upgrade --kubernetes` at the end), keeping its quoting and its line
// comment, as SetTalosVersion. The key must be there already, as a
// one-line value; version is written as given (1.36.1: the rack file's
// form, without v).
func SetKubernetesVersion(src []byte, version string) ([]byte, error) {
	return setClusterVersion(src, "kubernetesVersion", "Kubernetes", "1.36.1", version,
		func(c *profiles.Cluster) { c.KubernetesVersion = version })
}
