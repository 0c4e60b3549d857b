package profiles

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	jsonpatch "github.com/evanphx/json-patch"
	talosx509 "github.com/siderolabs/crypto/x509"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/compatibility"
	"github.com/siderolabs/talos/pkg/machinery/compatibility/talos113"
	coreconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// validationClock dates the throwaway CAs that validation generates configs
// with: they are never written anywhere, and a fixed date keeps validation
// independent of the clock.
func validationClock() secrets.Clock {
	return secrets.NewFixedClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
}

// throwawayBundle is a complete secrets bundle for checking configs only.
// secrets.NewBundle would take over a second (a 4096-bit RSA service-account
// key); validation runs before every command, so the service-account key is
// ECDSA here and the tokens are fixed: nothing made from it is kept.
func throwawayBundle(contract *coreconfig.VersionContract) (*secrets.Bundle, error) {
	now := validationClock().Now()
	b := &secrets.Bundle{
		Clock:      validationClock(),
		Cluster:    &secrets.Cluster{ID: "cmFja2Jvb3QtdmFsaWRhdGlvbg==", Secret: "cmFja2Jvb3QtdmFsaWRhdGlvbg=="},
		Secrets:    &secrets.Secrets{BootstrapToken: "abcdef.0123456789abcdef", SecretboxEncryptionSecret: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
		TrustdInfo: &secrets.TrustdInfo{Token: "abcdef.0123456789abcdef"},
		Certs:      &secrets.Certs{},
	}
	pair := func(ca *talosx509.CertificateAuthority, err error) (*talosx509.PEMEncodedCertificateAndKey, error) {
		if err != nil {
			return nil, err
		}
		return &talosx509.PEMEncodedCertificateAndKey{Crt: ca.CrtPEM, Key: ca.KeyPEM}, nil
	}
	var err error
	if b.Certs.Etcd, err = pair(secrets.NewEtcdCA(now, contract)); err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	if b.Certs.K8s, err = pair(secrets.NewKubernetesCA(now, contract)); err != nil {
		return nil, fmt.Errorf("kubernetes CA: %w", err)
	}
	if b.Certs.K8sAggregator, err = pair(secrets.NewAggregatorCA(now, contract)); err != nil {
		return nil, fmt.Errorf("aggregator CA: %w", err)
	}
	if b.Certs.OS, err = pair(secrets.NewTalosCA(now)); err != nil {
		return nil, fmt.Errorf("talos CA: %w", err)
	}
	sa, err := talosx509.NewECDSAKey()
	if err != nil {
		return nil, fmt.Errorf("service-account key: %w", err)
	}
	b.Certs.K8sServiceAccount = &talosx509.PEMEncodedKey{Key: sa.KeyPEM}
	return b, nil
}

// talosProblems checks what only Talos can judge: the Talos and Kubernetes
// versions, the schematics, that every patch loads and applies, and that the
// config generated for every machine passes Talos's metal validation. It
// needs no secrets on disk: configs are generated with a throwaway bundle.
//
// Values the structural checks (validate.go) own — the form of talosVersion,
// an unparsable VIP or address, an unknown role, a malformed schematic —
// make it skip that part instead of repeating their message.
func talosProblems(r *Rack) Problems {
	var ps Problems
	add := func(path string, warning bool, format string, args ...any) {
		ps = append(ps, Problem{File: r.Path, Pos: r.PosOf(path), Warning: warning, Msg: fmt.Sprintf(format, args...)})
	}
	if !checkVersions(r, add) {
		return ps
	}
	contract, err := r.versionContract()
	if err != nil {
		add("cluster.talosVersion", false, "%v", err)
		return ps
	}
	b, err := throwawayBundle(contract)
	if err != nil {
		add("cluster", false, "cannot generate throwaway secrets to check the configs: %v", err)
		return ps
	}

	clusterPatches := make([]configpatcher.Patch, len(r.Cluster.Patches))
	for j, p := range r.Cluster.Patches {
		clusterPatches[j] = loadRackPatch(p, fmt.Sprintf("cluster.patches[%d]", j), add)
	}
	if _, err := netip.ParseAddr(r.Cluster.VIP); err != nil {
		return ps // the structural checks report the VIP
	}

	reported := map[int]bool{} // cluster patches already reported as failing
	shadowed := map[string]bool{}
	for i := range r.Machines {
		m := &r.Machines[i]
		at := fmt.Sprintf("machines[%d]", i)
		if m.Role != RoleControlPlane && m.Role != RoleWorker {
			continue
		}
		if !m.IsDHCP() {
			if _, err := netip.ParsePrefix(m.Address); err != nil {
				continue
			}
		}
		// Schematic ids and extension names are validate.go's to report.
		if _, err := SchematicID(r.Schematic(m)); err != nil {
			continue
		}
		machinePatches := make([]configpatcher.Patch, len(m.Patches))
		for j, p := range m.Patches {
			machinePatches[j] = loadRackPatch(p, fmt.Sprintf("%s.patches[%d]", at, j), add)
		}
		cfg, err := r.baseConfig(m, b)
		if err != nil {
			add(at, false, "%v", err)
			continue
		}
		patchesOK := true
		for j, p := range clusterPatches {
			if p == nil {
				patchesOK = false
				continue
			}
			out, err := configpatcher.Apply(configpatcher.WithConfig(cfg), []configpatcher.Patch{p})
			if err == nil {
				cfg, err = out.Config()
			}
			if err != nil {
				patchesOK = false
				if !reported[j] {
					reported[j] = true
					add(fmt.Sprintf("cluster.patches[%d]", j), false, "this patch does not apply to the config of %s: %v; check the field paths against the Talos v1.13 config reference", m.Name, err)
				}
			}
		}
		for j, p := range machinePatches {
			if p == nil {
				patchesOK = false
				continue
			}
			out, err := configpatcher.Apply(configpatcher.WithConfig(cfg), []configpatcher.Patch{p})
			if err == nil {
				cfg, err = out.Config()
			}
			if err != nil {
				patchesOK = false
				add(fmt.Sprintf("%s.patches[%d]", at, j), false, "this patch does not apply to the config of %s: %v; check the field paths against the Talos v1.13 config reference", m.Name, err)
			}
		}
		if !patchesOK {
			continue // validating a half-patched config would only add noise
		}
		shadowedMirrors(r, cfg, at, m.Name, shadowed, add)
		warnings, err := cfg.Validate(metalMode{})
		if err != nil {
			add(at, false, "the Talos config of %s fails metal validation: %s; fix the rack fields or patches that set it (see `rackboot config %s`)", m.Name, oneLine(err), m.Name)
		}
		for _, w := range warnings {
			add(at, true, "Talos warns about the config of %s: %s", m.Name, w)
		}
	}
	return ps
}

// shadowedMirrors warns, once per registry, about a patch that sets the
// deprecated machine.registries.mirrors for a registry rackboot mirrors:
// Talos reads the RegistryMirrorConfig document of that name instead (M
// config/container/container.go RegistryMirrorConfigs: documents override
// v1alpha1 entries by name), so the patch does nothing.
func shadowedMirrors(r *Rack, cfg coreconfig.Provider, at, name string, done map[string]bool, add func(path string, warning bool, format string, args ...any)) {
	if _, ok := r.RegistryURL(); !ok {
		return
	}
	raw := cfg.RawV1Alpha1()
	if raw == nil || raw.MachineConfig == nil {
		return
	}
	for _, h := range DefaultRegistryHosts() {
		//lint:ignore SA1019 a patch may still set the deprecated field, which is what is reported
		if _, set := raw.MachineConfig.MachineRegistries.RegistryMirrors[h]; !set || done[h] {
			continue
		}
		done[h] = true
		add(at, true, "a patch of %s sets machine.registries.mirrors[%q], which Talos ignores: rackboot's RegistryMirrorConfig document %q (its registry mirror) takes that registry's place; "+
			"to add an endpoint after rackboot's, patch with a document instead: apiVersion: v1alpha1, kind: RegistryMirrorConfig, name: %s, endpoints: [{url: ...}]", name, h, h, h)
	}
}

// checkVersions checks the Talos and Kubernetes versions; false means that
// nothing else can be checked.
func checkVersions(r *Rack, add func(path string, warning bool, format string, args ...any)) bool {
	// The form of talosVersion (vX.Y.Z) is validate.go's to report.
	tv := r.Cluster.TalosVersion
	if !strings.HasPrefix(tv, "v") {
		return false
	}
	talos, err := compatibility.ParseTalosVersion(&machineapi.VersionInfo{Tag: tv})
	if err != nil {
		return false
	}
	kv := r.Cluster.KubernetesVersion
	k8s, err := compatibility.ParseKubernetesVersion(kv)
	if err != nil || strings.HasPrefix(kv, "v") {
		if kv == "" {
			add("cluster.kubernetesVersion", false, "kubernetesVersion is missing: write one such as %s", constants.DefaultKubernetesVersion)
		} else {
			add("cluster.kubernetesVersion", false, "kubernetesVersion %q is not a version: write a version without v, such as %s", kv, constants.DefaultKubernetesVersion)
		}
		return false
	}
	if err := k8s.SupportedWith(talos); err != nil {
		hint := fmt.Sprintf("rackboot's Talos machinery (v1.13) knows the supported ranges only up to Talos v1.13: write talosVersion v1.13.x with kubernetesVersion %s", constants.DefaultKubernetesVersion)
		if strings.HasPrefix(talos.String(), "1.13.") {
			hint = fmt.Sprintf("Talos 1.13 runs Kubernetes %s up to %d.%d.x: write kubernetesVersion %s",
				talos113.MinimumKubernetesVersion, talos113.MaximumKubernetesVersion.Major, talos113.MaximumKubernetesVersion.Minor, constants.DefaultKubernetesVersion)
		}
		add("cluster.kubernetesVersion", false, "%v; %s", err, hint)
		return false
	}
	return true
}

// loadRackPatch loads a patch, reporting (and returning nil) when it is
// neither a strategic-merge patch nor a JSON6902 list.
func loadRackPatch(p Patch, path string, add func(path string, warning bool, format string, args ...any)) configpatcher.Patch {
	data, err := p.Bytes()
	if err == nil {
		var patch configpatcher.Patch
		if patch, err = configpatcher.LoadPatch(data); err == nil {
			if _, isJSON := patch.(jsonpatch.Patch); !isJSON {
				return patch
			}
			// Talos applies JSON6902 only to single-document configs, and
			// every config rackboot writes has several documents.
			add(path, false, "this is a JSON6902 patch, which Talos cannot apply to multi-document configs (v1.12+): write it as a strategic-merge mapping instead (e.g. machine: {sysctls: {vm.nr_hugepages: \"1024\"}}; delete a field with $patch: delete)")
			return nil
		}
	}
	add(path, false, "this patch does not load: %s; write a mapping of Talos config fields, e.g. machine: {sysctls: {vm.nr_hugepages: \"1024\"}}", oneLine(err))
	return nil
}

// oneLine folds a multi-line error (Talos joins its validation errors with
// newlines and bullets) into one line for file:line:col output.
func oneLine(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(l), "*"))
		if l != "" && !strings.HasSuffix(l, "error occurred:") && !strings.HasSuffix(l, "errors occurred:") {
			parts = append(parts, l)
		}
	}
	if len(parts) == 0 {
		return strconv.Quote(err.Error())
	}
	return strings.Join(parts, "; ")
}
