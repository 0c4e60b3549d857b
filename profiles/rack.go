// Package profiles holds the rack file: its types, its loader (which keeps the
// position of every value so that problems point at file:line:col), its
// validation, the matching of a booting machine to its entry, and the Talos
// machine configs generated from it.
package profiles

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ExampleRack is the seed's rack: `rackboot init` writes it and the demo uses
// it when no rack file is given.
//
//go:embed example/rack.yaml
var ExampleRack []byte

// Role is a machine's role in the cluster.
type Role string

// The two roles Talos knows.
const (
	RoleControlPlane Role = "controlplane"
	RoleWorker       Role = "worker"
)

// Rack is a whole rack file.
type Rack struct {
	Cluster  Cluster   `yaml:"cluster"`
	Machines []Machine `yaml:"machines"`
	Lab      Lab       `yaml:"lab,omitempty"`
	// Database is the engine serving the apps and their databases.
	Database Database `yaml:"database,omitempty"`

	// Path is the file the rack was read from (for messages and the state dir).
	Path string `yaml:"-"`
	// pos maps a field path such as "machines[2].select.mac[0]" to where its
	// value (or, for a missing value, its parent) stands in the file.
	pos map[string]Pos
}

// Cluster is what all machines share.
type Cluster struct {
	Name              string    `yaml:"name"`
	TalosVersion      string    `yaml:"talosVersion"`
	KubernetesVersion string    `yaml:"kubernetesVersion"`
	VIP               string    `yaml:"vip"`
	Network           Network   `yaml:"network"`
	Schematic         Schematic `yaml:"schematic,omitempty"`
	// InstallDisk is the default install disk rule (default: type nvme).
	InstallDisk DiskRule `yaml:"installDisk,omitempty"`
	// CephDisks is the default Ceph device filter, an anchored regular
	// expression over kernel disk names (default ^sd[a-z]+$).
	CephDisks string `yaml:"cephDisks,omitempty"`
	// Patches are Talos config patches applied to every machine, before the
	// machine's own.
	Patches []Patch `yaml:"patches,omitempty"`
	// IPXEBuild is the iPXE build x64 UEFI machines netboot: full (default)
	// or snponly (validate_ipxe.go); a machine's own overrides it.
	IPXEBuild IPXEBuild `yaml:"ipxeBuild,omitempty"`
	// Offline says the rack has no internet: every config's registry
	// mirrors (rackboot's, at network.rackboot port RegistryPort) get
	// skipFallback, so Talos pulls every image from rackboot and never
	// from the upstream registry. Default false: the upstream is tried
	// after the mirror. Needs network.rackboot.
	Offline bool `yaml:"offline,omitempty"`
	// Discover boots machines that are not in the rack file into Talos
	// without a config (its maintenance mode), so that they show up in
	// `rackboot machines` and can be adopted (`rackboot machine adopt`).
	// Default false: they are told to wait (serve --discover turns it on
	// too). They never get a config or a token either way.
	Discover bool `yaml:"discover,omitempty"`
}

// Network is the rack's L2/L3 network.
type Network struct {
	Subnet      string   `yaml:"subnet"`
	Gateway     string   `yaml:"gateway"`
	Nameservers []string `yaml:"nameservers,omitempty"`
	// Link is the default interface name for static addresses and the VIP.
	Link string `yaml:"link,omitempty"`
	// Rackboot is the address of the computer running rackboot on the rack
	// network. Every config then carries an EventSinkConfig and a
	// KmsgLogConfig pointing at it (ports EventsPort and LogPort), so that
	// events and kernel logs keep coming once Talos runs from disk, and
	// from ISO/USB installs, and a RegistryMirrorConfig per registry the
	// rack pulls from, naming rackboot's registry mirror
	// (http://<rackboot>:RegistryPort). Empty: the configs have none of
	// them (a warning).
	Rackboot string `yaml:"rackboot,omitempty"`
}

// Schematic is an Image Factory schematic: either a known ID or the
// extensions and kernel arguments it is made of (the ID is then computed).
type Schematic struct {
	ID         string   `yaml:"id,omitempty"`
	Extensions []string `yaml:"extensions,omitempty"`
	KernelArgs []string `yaml:"kernelArgs,omitempty"`
}

// IsZero reports whether nothing is set.
func (s Schematic) IsZero() bool {
	return s.ID == "" && len(s.Extensions) == 0 && len(s.KernelArgs) == 0
}

// DiskRule selects a disk the way Talos's install disk selector does.
type DiskRule struct {
	// Type is the transport: nvme (default), sata/ssd/hdd, virtio...
	Type   string `yaml:"type,omitempty"`
	Model  string `yaml:"model,omitempty"`
	Serial string `yaml:"serial,omitempty"`
	// Size is a Talos size expression such as ">= 100GB".
	Size    string `yaml:"size,omitempty"`
	BusPath string `yaml:"busPath,omitempty"`
}

// IsZero reports whether nothing is set.
func (d DiskRule) IsZero() bool { return d == DiskRule{} }

// Selector says how a booting machine is recognised. The most specific
// selector wins: UUID, then serial, then MAC.
type Selector struct {
	MAC    []string `yaml:"mac,omitempty"`
	UUID   string   `yaml:"uuid,omitempty"`
	Serial string   `yaml:"serial,omitempty"`
}

// Taint is a Kubernetes node taint.
type Taint struct {
	Key    string `yaml:"key"`
	Value  string `yaml:"value,omitempty"`
	Effect string `yaml:"effect"`
}

// LocalBoot is how an installed machine is sent to its disk by iPXE.
type LocalBoot string

// Local boot methods.
const (
	LocalBootExit    LocalBoot = "exit"
	LocalBootSanboot LocalBoot = "sanboot"
)

// Machine is one server.
type Machine struct {
	Name   string   `yaml:"name"`
	Role   Role     `yaml:"role"`
	Select Selector `yaml:"select"`
	// Address is "dhcp" (default) or a static address in CIDR form.
	Address string `yaml:"address,omitempty"`
	// Link overrides the network's link name.
	Link        string            `yaml:"link,omitempty"`
	InstallDisk DiskRule          `yaml:"installDisk,omitempty"`
	CephDisks   string            `yaml:"cephDisks,omitempty"`
	Schematic   Schematic         `yaml:"schematic,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Taints      []Taint           `yaml:"taints,omitempty"`
	Patches     []Patch           `yaml:"patches,omitempty"`
	// Arch is amd64 (default) or arm64.
	Arch string `yaml:"arch,omitempty"`
	// LocalBoot is exit (default) or sanboot.
	LocalBoot LocalBoot `yaml:"localBoot,omitempty"`
	// IPXEBuild overrides the cluster's ipxeBuild for this machine.
	IPXEBuild IPXEBuild `yaml:"ipxeBuild,omitempty"`
	// BMC is how rackboot powers the machine (nil: someone presses the
	// power button). Its password is in the state dir (bmc_password.go).
	BMC *BMC `yaml:"bmc,omitempty"`
}

// BMC is how rackboot reaches a machine's baseboard management controller
// (iLO, iDRAC, ...): address, protocol and user. Never its password.
type BMC struct {
	// Address is HOST[:PORT] (an IP or a DNS name), or for Redfish a URL
	// (https://HOST[:PORT]).
	Address string `yaml:"address"`
	// Protocol is ipmi, redfish or auto (default: Redfish first, then IPMI).
	Protocol string `yaml:"protocol,omitempty"`
	User     string `yaml:"user"`
	// SystemID picks the Redfish system on a BMC that has several: its
	// Id, UUID or a NIC's MAC.
	SystemID string `yaml:"systemId,omitempty"`
	// Firmware is the mode of the one-time network boot: uefi or bios
	// (default: lab.firmware for the machine, else uefi).
	Firmware string `yaml:"firmware,omitempty"`
	// VerifyTLS checks a Redfish BMC's certificate, against CAFile when
	// given, else this computer's roots. Default: any certificate (BMCs
	// ship self-signed ones).
	VerifyTLS bool `yaml:"verifyTLS,omitempty"`
	// CAFile is a PEM file of the CA that signed the BMC's certificate
	// (relative to the rack file); it implies verifyTLS.
	CAFile string `yaml:"caFile,omitempty"`
	// Password is only here to be refused with a helpful message: the
	// value is never kept.
	Password refusedSecret `yaml:"password,omitempty"`
}

// refusedSecret records that a field was written without keeping its
// value (a password written into the rack file by mistake).
type refusedSecret bool

// UnmarshalYAML notes the field and drops its value.
func (s *refusedSecret) UnmarshalYAML(*yaml.Node) error {
	*s = true
	return nil
}

// MarshalYAML never writes a value.
func (s refusedSecret) MarshalYAML() (any, error) { return nil, nil }

// Patch is a Talos config patch: a mapping (strategic merge) or a string
// holding a patch document (YAML strategic merge or a JSON6902 list).
type Patch struct {
	node *yaml.Node
}

// UnmarshalYAML keeps the node as it is.
func (p *Patch) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode, yaml.ScalarNode, yaml.SequenceNode:
		p.node = n
		return nil
	default:
		return fmt.Errorf("line %d: a patch is a mapping or a string", n.Line)
	}
}

// MarshalYAML gives the node back.
func (p Patch) MarshalYAML() (any, error) { return p.node, nil }

// Bytes is the patch as a document that configpatcher.LoadPatch accepts.
func (p Patch) Bytes() ([]byte, error) {
	if p.node == nil {
		return nil, errors.New("empty patch")
	}
	if p.node.Kind == yaml.ScalarNode {
		return []byte(p.node.Value), nil
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(p.node); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// Line is where the patch starts in the rack file.
func (p Patch) Line() int {
	if p.node == nil {
		return 0
	}
	return p.node.Line
}

// Lab sizes the virtual rack (`rackboot lab`); real machines ignore it.
type Lab struct {
	// Machines limits the lab to the first N machines (0: all).
	Machines int `yaml:"machines,omitempty"`
	// MemoryMiB per VM (default 512).
	MemoryMiB int `yaml:"memoryMiB,omitempty"`
	// NVMeSize and SATASizes are disk sizes such as "4G".
	NVMeSize  string   `yaml:"nvmeSize,omitempty"`
	SATASizes []string `yaml:"sataSizes,omitempty"`
	// Firmware per machine name: bios (default) or uefi.
	Firmware map[string]string `yaml:"firmware,omitempty"`
}

// Pos is a place in the rack file.
type Pos struct {
	Line, Col int
}

// Problem is one thing wrong with a rack file.
type Problem struct {
	File    string
	Pos     Pos
	Warning bool
	Msg     string
}

func (p Problem) String() string {
	kind := "error"
	if p.Warning {
		kind = "warning"
	}
	return fmt.Sprintf("%s:%d:%d: %s: %s", p.File, p.Pos.Line, p.Pos.Col, kind, p.Msg)
}

// Problems is every problem found in a rack file; it is an error when at
// least one of them is not a warning.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Errors reports whether any problem is an error, not a warning.
func (ps Problems) Errors() bool {
	for _, p := range ps {
		if !p.Warning {
			return true
		}
	}
	return false
}

// LoadFile reads and parses a rack file. It returns Problems (with file:line)
// for anything it cannot read; it does not validate meaning (see Validate).
func LoadFile(path string) (*Rack, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read rack file: %w", err)
	}
	return Load(path, data)
}

// Load parses a rack file held in memory. name is used in messages.
// Unknown fields and values of the wrong type are all reported at once.
func Load(name string, data []byte) (*Rack, error) {
	r := &Rack{Path: name, pos: map[string]Pos{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, Problems{{File: name, Pos: yamlErrPos(err), Msg: cleanYAMLErr(err)}}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, Problems{{File: name, Pos: Pos{1, 1}, Msg: "the rack file is empty: start from `rackboot init`"}}
	}
	// A second document (after ---) would be silently ignored: refuse it.
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, Problems{{File: name, Pos: yamlErrPos(err), Msg: cleanYAMLErr(err)}}
	default:
		at := Pos{extra.Line, extra.Column}
		if len(extra.Content) > 0 {
			at = Pos{extra.Content[0].Line, extra.Content[0].Column}
		}
		return nil, Problems{{File: name, Pos: at, Msg: "a second YAML document starts here (after ---), and a rack file holds one: move its fields into the first document and remove the ---"}}
	}
	root := doc.Content[0]
	var probs Problems
	walk(root, reflect.TypeOf(Rack{}), "", r.pos, map[*yaml.Node]bool{}, func(n *yaml.Node, msg string) {
		probs = append(probs, Problem{File: name, Pos: Pos{n.Line, n.Column}, Msg: msg})
	})
	if len(probs) > 0 {
		return nil, probs
	}
	if err := root.Decode(r); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				at := yamlErrPos(errors.New(e))
				at.Col = valueCol(data, at.Line, e)
				probs = append(probs, Problem{File: name, Pos: at, Msg: cleanYAMLErr(errors.New(e))})
			}
			return nil, probs
		}
		return nil, Problems{{File: name, Pos: yamlErrPos(err), Msg: cleanYAMLErr(err)}}
	}
	r.Path = name
	return r, nil
}

// PosOf returns where the value at a field path stands, falling back to the
// nearest parent that exists (so a missing field points at its parent).
func (r *Rack) PosOf(path string) Pos {
	for {
		if p, ok := r.pos[path]; ok {
			return p
		}
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			if p, ok := r.pos[""]; ok {
				return p
			}
			return Pos{1, 1}
		}
		path = path[:i]
	}
}

// walk checks that every mapping key names a field of t (reporting the ones
// that do not, with the fields that exist) and records positions. merging
// holds the mappings being merged in (YAML "<<" keys) on the way down, so
// that a mapping merging itself stops here (Decode reports it).
func walk(n *yaml.Node, t reflect.Type, path string, pos map[string]Pos, merging map[*yaml.Node]bool, report func(*yaml.Node, string)) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeOf(Patch{}) {
		pos[path] = Pos{n.Line, n.Column}
		return
	}
	if n.Kind == yaml.MappingNode && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map) {
		// Merged mappings first, so that the mapping's own keys override
		// the positions they record.
		for i := 0; i+1 < len(n.Content); i += 2 {
			if !isMergeKey(n.Content[i]) {
				continue
			}
			for _, src := range mergeSources(n.Content[i+1]) {
				if src.Kind != yaml.MappingNode {
					report(src, fmt.Sprintf("<< in %s must merge a mapping (an alias such as *defaults)", describe(path)))
					continue
				}
				if merging[src] {
					continue
				}
				merging[src] = true
				walk(src, t, path, pos, merging, report)
				delete(merging, src)
			}
		}
	}
	pos[path] = Pos{n.Line, n.Column}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			report(n, fmt.Sprintf("%s must be a mapping (key: value lines)", describe(path)))
			return
		}
		fields := yamlFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMergeKey(k) {
				continue
			}
			f, ok := fields[k.Value]
			if !ok {
				report(k, fmt.Sprintf("unknown field %q in %s: write one of %s", k.Value, describe(path), strings.Join(sortedKeys(fields), ", ")))
				continue
			}
			if seen[k.Value] {
				report(k, fmt.Sprintf("field %q is given twice in %s: keep one", k.Value, describe(path)))
			}
			seen[k.Value] = true
			walk(v, f.Type, join(path, k.Value), pos, merging, report)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			report(n, fmt.Sprintf("%s must be a list (lines starting with \"- \")", describe(path)))
			return
		}
		for i, c := range n.Content {
			walk(c, t.Elem(), path+"["+strconv.Itoa(i)+"]", pos, merging, report)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			report(n, fmt.Sprintf("%s must be a mapping (key: value lines)", describe(path)))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if isMergeKey(n.Content[i]) {
				continue
			}
			walk(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), pos, merging, report)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			report(n, fmt.Sprintf("%s must be a single value, not a list or mapping", describe(path)))
		}
	}
}

// isMergeKey reports a YAML merge key (<<).
func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}

// mergeSources is what a merge key's value brings in: one mapping or a list
// of them, usually aliases.
func mergeSources(v *yaml.Node) []*yaml.Node {
	deref := func(n *yaml.Node) *yaml.Node {
		for n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		return n
	}
	v = deref(v)
	if v.Kind != yaml.SequenceNode {
		return []*yaml.Node{v}
	}
	out := make([]*yaml.Node, 0, len(v.Content))
	for _, c := range v.Content {
		out = append(out, deref(c))
	}
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func describe(path string) string {
	if path == "" {
		return "the rack file"
	}
	return path
}

// yamlFields maps YAML keys to struct fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "-" {
			continue
		}
		if tag == "" {
			tag = strings.ToLower(f.Name)
		}
		out[tag] = f
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// valueCol finds the column of the value a yaml.v3 type error quotes
// ("cannot unmarshal !!str `lots` into int", long values cut to 7
// characters and "...") on its line; 1 when it cannot.
func valueCol(data []byte, line int, msg string) int {
	i := strings.Index(msg, "`")
	j := strings.LastIndex(msg, "`")
	if i < 0 || j <= i+1 {
		return 1
	}
	v := strings.TrimSuffix(msg[i+1:j], "...")
	lines := strings.Split(string(data), "\n")
	if line < 1 || line > len(lines) {
		return 1
	}
	text := lines[line-1]
	// Skip the key: the value comes after the first ": " or "- ".
	from := 0
	if k := strings.Index(text, ": "); k >= 0 {
		from = k + 2
	} else if k := strings.Index(text, "- "); k >= 0 {
		from = k + 2
	}
	k := strings.Index(text[from:], v)
	if k < 0 {
		return 1
	}
	col := from + k
	if col > 0 && (text[col-1] == '"' || text[col-1] == '\'') {
		col--
	}
	return col + 1
}

// yamlErrPos pulls "line N" out of a yaml.v3 error message.
func yamlErrPos(err error) Pos {
	s := err.Error()
	i := strings.Index(s, "line ")
	if i < 0 {
		return Pos{1, 1}
	}
	j := i + 5
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	n, convErr := strconv.Atoi(s[i+5 : j])
	if convErr != nil || n < 1 {
		return Pos{1, 1}
	}
	return Pos{n, 1}
}

func cleanYAMLErr(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	if i := strings.Index(s, "line "); i >= 0 {
		if j := strings.Index(s[i:], ": "); j >= 0 {
			s = s[:i] + s[i+j+2:]
		}
	}
	s = strings.TrimSpace(s)
	if strings.Contains(s, "cannot unmarshal") {
		s += ": check the value's type (quote strings, use a list where a list is expected)"
	}
	return s
}

// Defaults the rack file may leave out.
const (
	DefaultCephDisks = `^sd[a-z]+$`
	// LinkAlias names the rack-facing NIC when the rack file gives no link:
	// a LinkAliasConfig selects it by the machine's MAC, so the name is the
	// same whatever the kernel calls the interface (enp3s0, eno1...).
	LinkAlias           = "rack0"
	VanillaSchematicID  = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
	DefaultInstallType  = "nvme"
	DefaultArch         = "amd64"
	DefaultLabMemoryMiB = 512
)

// MACs are the machine's MACs from select.mac that parse (validate reports
// the others).
func (m *Machine) MACs() []net.HardwareAddr {
	var out []net.HardwareAddr
	for _, s := range m.Select.MAC {
		if mac, err := NormalizeMAC(s); err == nil {
			out = append(out, mac)
		}
	}
	return out
}

// Machine returns the machine with that name, or nil.
func (r *Rack) Machine(name string) *Machine {
	for i := range r.Machines {
		if r.Machines[i].Name == name {
			return &r.Machines[i]
		}
	}
	return nil
}

// ControlPlanes returns the control-plane machines in file order.
func (r *Rack) ControlPlanes() []*Machine {
	var out []*Machine
	for i := range r.Machines {
		if r.Machines[i].Role == RoleControlPlane {
			out = append(out, &r.Machines[i])
		}
	}
	return out
}

// InstallDisk is the machine's install disk rule over the cluster default;
// with neither, the NVMe disk.
func (r *Rack) InstallDisk(m *Machine) DiskRule {
	d := r.Cluster.InstallDisk
	if !m.InstallDisk.IsZero() {
		d = m.InstallDisk
	}
	if d.Type == "" {
		d.Type = DefaultInstallType
	}
	return d
}

// CephDisks is the machine's Ceph device filter.
func (r *Rack) CephDisks(m *Machine) string {
	switch {
	case m.CephDisks != "":
		return m.CephDisks
	case r.Cluster.CephDisks != "":
		return r.Cluster.CephDisks
	default:
		return DefaultCephDisks
	}
}

// Schematic is the machine's schematic, else the cluster's, else vanilla.
func (r *Rack) Schematic(m *Machine) Schematic {
	switch {
	case !m.Schematic.IsZero():
		return m.Schematic
	case !r.Cluster.Schematic.IsZero():
		return r.Cluster.Schematic
	default:
		return Schematic{ID: VanillaSchematicID}
	}
}

// Link is the machine's interface name for its static address and the VIP:
// the machine's link, else the network's, else LinkAlias (an alias selected
// by MAC; see talos.go). aliased says whether the alias is used.
func (r *Rack) Link(m *Machine) (name string, aliased bool) {
	switch {
	case m.Link != "":
		return m.Link, false
	case r.Cluster.Network.Link != "":
		return r.Cluster.Network.Link, false
	default:
		return LinkAlias, true
	}
}

// Arch is the machine's CPU architecture (amd64 or arm64).
func (m *Machine) ArchOrDefault() string {
	if m.Arch == "" {
		return DefaultArch
	}
	return m.Arch
}

// IsDHCP reports whether the machine gets its address by DHCP.
func (m *Machine) IsDHCP() bool { return m.Address == "" || m.Address == "dhcp" }
