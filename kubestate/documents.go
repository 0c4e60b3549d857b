package kubestate

import (
	"context"
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ComponentDocument labels a document's ConfigMap.
const ComponentDocument = "document"

// Document is one state-directory file that a laptop command keeps in the
// cluster instead (upgrade.json for rackboot upgrade --kube), in the
// ConfigMap rackboot-<file name without extension> under the file's name.
// A Document remembers the version it read: Write over a document someone
// else wrote since is refused, so two laptops never overwrite each other's
// progress unseen. Use one Document per command run.
type Document struct {
	s    *Store
	file string
	name string
	// rv is the version read or written last; "" before Read, or after a
	// Read that found none (Write then creates the object).
	rv string
}

// Document returns the document that holds file (a plain file name such as
// upgrade.json).
func (s *Store) Document(file string) (*Document, error) {
	name, err := DocumentName(file)
	if err != nil {
		return nil, err
	}
	return &Document{s: s, file: file, name: name}, nil
}

// DocumentName is the ConfigMap name of file: rackboot- and the file name
// without its extension (upgrade.json: rackboot-upgrade).
func DocumentName(file string) (string, error) {
	if file == "" || file != path.Base(file) || strings.HasPrefix(file, ".") {
		return "", fmt.Errorf("document %q: want a plain file name such as upgrade.json", file)
	}
	name := "rackboot-" + strings.TrimSuffix(file, path.Ext(file))
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", fmt.Errorf("document %q: %s", file, errs[0])
	}
	if errs := validation.IsConfigMapKey(file); len(errs) > 0 {
		return "", fmt.Errorf("document %q: %s", file, errs[0])
	}
	return name, nil
}

// Where names the document for messages: configmap <ns>/<name> (<file>).
func (d *Document) Where() string {
	return fmt.Sprintf("configmap %s/%s (%s)", d.s.ns, d.name, d.file)
}

// Read returns the document's bytes; ok is false when it is not in the
// cluster. It makes nothing.
func (d *Document) Read(ctx context.Context) (data []byte, ok bool, err error) {
	cm, err := d.s.cs.CoreV1().ConfigMaps(d.s.ns).Get(ctx, d.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		d.rv = ""
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", d.Where(), err)
	}
	v, ok := cm.Data[d.file]
	if !ok {
		return nil, false, fmt.Errorf("%s has no key %s: fix or delete the object", d.Where(), d.file)
	}
	d.rv = cm.ResourceVersion
	return []byte(v), true, nil
}

// Write replaces the document with data: an Update at the version last
// read or written (a Create when there was none). Someone else's write in
// between is an error naming the document, and nothing is written.
func (d *Document) Write(ctx context.Context, data []byte) error {
	if err := checkSize(d.Where(), len(data)); err != nil {
		return err
	}
	cms := d.s.cs.CoreV1().ConfigMaps(d.s.ns)
	cm := &corev1.ConfigMap{ObjectMeta: d.s.meta(d.name, ComponentDocument), Data: map[string]string{d.file: string(data)}}
	var out *corev1.ConfigMap
	var err error
	if d.rv == "" {
		out, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	} else {
		cm.ResourceVersion = d.rv
		out, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	switch {
	case apierrors.IsAlreadyExists(err), apierrors.IsConflict(err), d.rv != "" && apierrors.IsNotFound(err):
		return fmt.Errorf("%s was changed by someone else since this command read it (is another rackboot working on it?): nothing written; run the command again: %w", d.Where(), err)
	case err != nil:
		return fmt.Errorf("write %s: %w", d.Where(), err)
	}
	d.rv = out.ResourceVersion
	return nil
}
