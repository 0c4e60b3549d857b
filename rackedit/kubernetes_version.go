package rackedit

import "errors"

// SetKubernetesVersion sets cluster.kubernetesVersion in place (`rackboot
// upgrade --kubernetes` at the end), keeping its quoting and its line
// comment, as SetTalosVersion. The key must be there already, as a
// one-line value; version is written as given (1.36.1: the rack file's
// form, without v).
func SetKubernetesVersion(src []byte, version string) ([]byte, error) {
	if version == "" {
		return nil, errors.New("empty Kubernetes version: give one such as 1.36.1")
	}
	before, err := load(src)
	if err != nil {
		return nil, err
	}
	d, err := parse(src)
	if err != nil {
		return nil, err
	}
	out, err := d.setClusterScalar("kubernetesVersion", version)
	if err != nil {
		return nil, err
	}
	want := *before
	want.Cluster.KubernetesVersion = version
	if err := verify(out, &want, "setting the Kubernetes version"); err != nil {
		return nil, err
	}
	return out, nil
}
