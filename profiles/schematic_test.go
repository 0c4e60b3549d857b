package profiles

import (
	"strings"
	"testing"
)

func TestSchematicID(t *testing.T) {
	for _, tc := range []struct {
		name    string
		s       Schematic
		want    string
		wantErr string
	}{
		// Image Factory's own test vectors (pkg/schematic/schematic_test.go).
		{name: "vanilla", s: Schematic{}, want: VanillaSchematicID},
		{name: "extra args", s: Schematic{KernelArgs: []string{"noapic", "nolapic"}}, want: "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c"},
		// The id the real factory returns for these two extensions (found
		// paired with this exact list in several public Talos setups).
		{name: "nvidia production", s: Schematic{Extensions: []string{
			"siderolabs/nvidia-container-toolkit-production",
			"siderolabs/nvidia-open-gpu-kernel-modules-production",
		}}, want: "6698d6f136c5bb37ca8bb8482c9084305084da0a5ead1f4dcae760796f8ab3a2"},
		{name: "empty lists are vanilla", s: Schematic{KernelArgs: []string{}, Extensions: []string{}}, want: VanillaSchematicID},
		{name: "id passes through", s: Schematic{ID: strings.Repeat("ab", 32)}, want: strings.Repeat("ab", 32)},
		{name: "short id", s: Schematic{ID: "abc"}, wantErr: "64 hex digits"},
		{name: "upper-case id", s: Schematic{ID: strings.Repeat("AB", 32)}, wantErr: "lower-case hex"},
		{name: "non-hex id", s: Schematic{ID: strings.Repeat("zz", 32)}, wantErr: "lower-case hex"},
		{name: "id and extensions", s: Schematic{ID: VanillaSchematicID, Extensions: []string{"siderolabs/iscsi-tools"}}, wantErr: "not both"},
		{name: "empty extension", s: Schematic{Extensions: []string{" "}}, wantErr: "empty extension"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SchematicID(tc.s)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("SchematicID(%+v) = %q, %v; want error containing %q", tc.s, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("SchematicID(%+v) = %q, %v; want %q", tc.s, got, err, tc.want)
			}
		})
	}
}

func TestSchematicYAMLShape(t *testing.T) {
	got, err := SchematicYAML(Schematic{
		Extensions: []string{"siderolabs/nvidia-container-toolkit-production", "siderolabs/nvidia-open-gpu-kernel-modules-production"},
		KernelArgs: []string{"net.ifnames=0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The factory's field order (extraKernelArgs before systemExtensions)
	// and gopkg yaml.v3's 4-space indentation.
	want := `customization:
    extraKernelArgs:
        - net.ifnames=0
    systemExtensions:
        officialExtensions:
            - siderolabs/nvidia-container-toolkit-production
            - siderolabs/nvidia-open-gpu-kernel-modules-production
`
	if string(got) != want {
		t.Fatalf("schematic YAML:\n%s\nwant:\n%s", got, want)
	}
	// Order matters to the factory, so it matters to the ID.
	a, _ := SchematicID(Schematic{Extensions: []string{"a/x", "a/y"}})
	b, _ := SchematicID(Schematic{Extensions: []string{"a/y", "a/x"}})
	if a == b {
		t.Fatal("extension order does not change the ID; the factory hashes the list as written")
	}
}

func TestInstallerImage(t *testing.T) {
	got := InstallerImage(VanillaSchematicID, "v1.13.0")
	want := "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.0"
	if got != want {
		t.Fatalf("InstallerImage = %q, want %q", got, want)
	}
}
