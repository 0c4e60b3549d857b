package rook

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// ParseYAML decodes a multi-document YAML stream (documents separated by
// `---`) into objects, in stream order. Empty and comment-only documents are
// skipped; every other document must be a mapping with apiVersion, kind and
// metadata.name. name is used in error messages only.
func ParseYAML(name string, data []byte) ([]*unstructured.Unstructured, error) {
	return parseYAML(name, data, "")
}

// parseYAML is ParseYAML; a document whose top-level kind is skipKind
// (a line "kind: <skipKind>" at column 0) is left out unparsed.
func parseYAML(name string, data []byte, skipKind string) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: read YAML document %d: %w", name, doc, err)
		}
		if skipKind != "" && topLevelKind(raw) == skipKind {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("%s: YAML document %d: %w", name, doc, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if err := CheckObject(u); err != nil {
			return nil, fmt.Errorf("%s: YAML document %d: %w", name, doc, err)
		}
		out = append(out, u)
	}
}

// CheckObject reports an object without apiVersion, kind or metadata.name,
// or whose fields of those names are not strings.
func CheckObject(u *unstructured.Unstructured) error {
	for _, f := range [][]string{{"apiVersion"}, {"kind"}, {"metadata", "name"}} {
		v, ok, err := unstructured.NestedString(u.Object, f...)
		if err != nil {
			return fmt.Errorf("object %s: %w", describe(u), err)
		}
		if !ok || v == "" {
			return fmt.Errorf("object %s has no %s", describe(u), join(f))
		}
	}
	if ns, _, err := unstructured.NestedFieldNoCopy(u.Object, "metadata", "namespace"); err != nil || (ns != nil && !isString(ns)) {
		return fmt.Errorf("object %s: metadata.namespace is not a string", describe(u))
	}
	return nil
}

func isString(v any) bool { _, ok := v.(string); return ok }

func join(f []string) string {
	s := f[0]
	for _, p := range f[1:] {
		s += "." + p
	}
	return s
}

// describe names an object as well as its (possibly broken) fields allow.
func describe(u *unstructured.Unstructured) string {
	get := func(f ...string) string {
		v, _, _ := unstructured.NestedFieldNoCopy(u.Object, f...)
		if s, ok := v.(string); ok && s != "" {
			return s
		}
		return "?"
	}
	return fmt.Sprintf("%s %s/%s", get("kind"), get("metadata", "namespace"), get("metadata", "name"))
}

// topLevelKind is the value of a "kind:" line at column 0 of a YAML
// document (a top-level key: nested ones are indented), "" if none.
func topLevelKind(doc []byte) string {
	for line := range bytes.Lines(doc) {
		if v, ok := bytes.CutPrefix(line, []byte("kind:")); ok {
			return string(bytes.TrimSpace(v))
		}
	}
	return ""
}
