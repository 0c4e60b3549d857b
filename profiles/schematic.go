package profiles

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ImageFactory is the public Image Factory's host name.
const ImageFactory = "factory.talos.dev"

// factorySchematic mirrors the part of the Image Factory's schematic
// (github.com/siderolabs/image-factory pkg/schematic, Schematic) that a rack
// file can express, with the same field order and YAML tags, so that it
// marshals to the same bytes.
//
// Verified against image-factory's pkg/schematic/schematic.go and its
// schematic_test.go:
//   - ID() is hex(sha256(yaml.Marshal(schematic))) with gopkg.in/yaml.v3
//     (go.yaml.in/yaml/v3 is the same encoder: 4-space indent, sequences
//     indented under their key);
//   - field order in Customization is extraKernelArgs, meta, systemExtensions,
//     secureboot, each omitempty; Schematic has overlay (omitempty) before
//     customization (never omitted), so the empty schematic is
//     "customization: {}\n" → 376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba;
//   - pkg/schematic neither sorts nor de-duplicates the lists before hashing
//     (the POST /schematics handler hashes what Unmarshal returned; its
//     service layer was not read): the ID depends on the order written, so
//     rackboot keeps the rack file's order;
//   - extraKernelArgs [noapic, nolapic] → 9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c
//     (the factory's own test vector; ours is checked against it);
//   - the NVIDIA pair siderolabs/nvidia-container-toolkit-production,
//     siderolabs/nvidia-open-gpu-kernel-modules-production →
//     6698d6f136c5bb37ca8bb8482c9084305084da0a5ead1f4dcae760796f8ab3a2, the id
//     public Talos setups record from the real factory for that list.
type factorySchematic struct {
	Customization factoryCustomization `yaml:"customization"`
}

type factoryCustomization struct {
	ExtraKernelArgs  []string                `yaml:"extraKernelArgs,omitempty"`
	SystemExtensions factorySystemExtensions `yaml:"systemExtensions,omitempty"`
}

type factorySystemExtensions struct {
	OfficialExtensions []string `yaml:"officialExtensions,omitempty"`
}

// SchematicYAML is the schematic as the Image Factory stores it: the body to
// POST to https://factory.talos.dev/schematics, and what its ID hashes.
func SchematicYAML(s Schematic) ([]byte, error) {
	fs := factorySchematic{Customization: factoryCustomization{
		ExtraKernelArgs:  s.KernelArgs,
		SystemExtensions: factorySystemExtensions{OfficialExtensions: s.Extensions},
	}}
	out, err := yaml.Marshal(fs)
	if err != nil {
		return nil, fmt.Errorf("marshal schematic: %w", err)
	}
	return out, nil
}

// SchematicID is the schematic's Image Factory ID: s.ID when given (it must
// be 64 hex digits), else computed offline exactly as the factory does.
func SchematicID(s Schematic) (string, error) {
	if s.ID != "" {
		if err := checkSchematicID(s.ID); err != nil {
			return "", err
		}
		if len(s.Extensions) > 0 || len(s.KernelArgs) > 0 {
			return "", fmt.Errorf("schematic has both an id and extensions/kernelArgs: give either the id or what it is made of, not both")
		}
		return s.ID, nil
	}
	for _, e := range s.Extensions {
		if strings.TrimSpace(e) == "" {
			return "", fmt.Errorf("schematic has an empty extension name: write official names such as siderolabs/iscsi-tools")
		}
	}
	data, err := SchematicYAML(s)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

func checkSchematicID(id string) error {
	if len(id) != 64 {
		return fmt.Errorf("schematic id %q has %d characters: an Image Factory id is 64 hex digits (sha256)", id, len(id))
	}
	if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
		return fmt.Errorf("schematic id %q is not lower-case hex: an Image Factory id is 64 hex digits (sha256)", id)
	}
	return nil
}

// InstallerImage is the Image Factory metal installer image for a schematic
// and Talos version (machine.install.image).
func InstallerImage(schematicID, talosVersion string) string {
	return ImageFactory + "/metal-installer/" + schematicID + ":" + talosVersion
}
