// Package cmdline reads the kernel command line the way Talos does where the
// stand-in needs it: key=value parameters, and the talos.config= URL whose
// query values may carry ${uuid}, ${serial}, ${mac}, ${hostname} and ${code}.
package cmdline

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// Well-known parameters.
const (
	KeyConfig     = "talos.config"
	KeyEventsSink = "talos.events.sink"
	KeyPlatform   = "talos.platform"
	// KeyReboot is the stand-in's own switch: "rackboot.standin.reboot=1"
	// reboots instead of powering off after the report.
	KeyReboot = "rackboot.standin.reboot"
	// KeyConfigLink is the lab's switch for the multi-NIC case:
	// "rackboot.lab.config_link=<MAC>" makes the stand-in fetch
	// talos.config= from that link's DHCP address, out of that link.
	// Talos has no such parameter; its routes decide.
	KeyConfigLink = "rackboot.lab.config_link"
	// MetalISO is the talos.config value that reads config.yaml from the
	// volume labelled metal-iso.
	MetalISO = "metal-iso"
)

// Cmdline is a parsed kernel command line. A key may appear several times;
// like Talos's procfs.Cmdline, Get returns the first value.
type Cmdline struct {
	keys   []string
	values map[string][]string
}

// Parse splits a kernel command line into parameters. Double quotes group
// spaces into one parameter (as the kernel does: `a="b c"`) and are removed.
// A parameter without "=" has an empty value.
func Parse(s string) (*Cmdline, error) {
	c := &Cmdline{values: map[string][]string{}}
	var (
		cur     strings.Builder
		inQuote bool
		have    bool
	)
	flush := func() {
		if !have {
			return
		}
		param := cur.String()
		cur.Reset()
		have = false
		key, value, _ := strings.Cut(param, "=")
		if key == "" {
			return
		}
		if _, ok := c.values[key]; !ok {
			c.keys = append(c.keys, key)
		}
		c.values[key] = append(c.values[key], value)
	}
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			flush()
		case r == 0:
			return nil, errors.New("kernel command line contains NUL")
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("kernel command line has an unterminated quote")
	}
	flush()
	return c, nil
}

// Get returns the first value of key and whether the key is present.
func (c *Cmdline) Get(key string) (string, bool) {
	v, ok := c.values[key]
	if !ok {
		return "", false
	}
	return v[0], true
}

// Keys returns the parameter names in the order they first appear.
func (c *Cmdline) Keys() []string { return slices.Clone(c.keys) }

// Vars are the values Talos substitutes into the talos.config URL.
type Vars struct {
	UUID     string // SMBIOS system UUID (/sys/class/dmi/id/product_uuid)
	Serial   string // SMBIOS system serial (/sys/class/dmi/id/product_serial)
	MAC      string // first NIC's hardware address, lower case with colons
	Hostname string
	Code     string
}

// variable is one of Talos's URL variables (internal/app/machined/pkg/
// runtime/v1alpha1/platform/metal/url/variable.go at v1.13.0).
type variable struct {
	key string
	// matchOnArg: an empty "?uuid=" (or one holding only spaces) is filled
	// too, Talos's legacy form.
	matchOnArg bool
	value      func(Vars) string
}

func variables() []variable {
	return []variable{
		{"uuid", true, func(v Vars) string { return v.UUID }},
		{"serial", false, func(v Vars) string { return v.Serial }},
		{"mac", false, func(v Vars) string { return v.MAC }},
		{"hostname", false, func(v Vars) string { return v.Hostname }},
		{"code", false, func(v Vars) string { return v.Code }},
	}
}

func (v variable) re() *regexp.Regexp {
	return regexp.MustCompile(`(?i)` + regexp.QuoteMeta("${"+v.key+"}"))
}

func (v variable) matches(query url.Values) bool {
	re := v.re()
	for arg, values := range query {
		if v.matchOnArg && arg == v.key && !(len(values) == 1 && strings.TrimSpace(values[0]) != "") {
			return true
		}
		if slices.ContainsFunc(values, re.MatchString) {
			return true
		}
	}
	return false
}

func (v variable) replace(query url.Values, val string) {
	re := v.re()
	for arg, values := range query {
		if v.matchOnArg && arg == v.key && !(len(values) == 1 && strings.TrimSpace(values[0]) != "") {
			query.Set(arg, val)
			continue
		}
		for i, s := range values {
			// Talos uses ReplaceAllString, so "$" in a value is expanded
			// as a regexp template; kept for fidelity.
			values[i] = re.ReplaceAllString(s, val)
		}
		query[arg] = values
	}
}

// Populate fills the variables in the query values of a talos.config URL
// exactly as Talos v1.13 does: variables are matched case-insensitively,
// only in query values (never in the path), and when at least one variable
// is used the query is re-encoded (keys sorted, values escaped). A URL with
// no variables is returned unchanged. It returns the names of the
// variables that are used but have no value: Talos waits for those and,
// when it gives up, fetches the URL with them left in place; so does this.
func Populate(raw string, v Vars) (string, []string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", nil, fmt.Errorf("parse talos.config URL: %w", err)
	}
	query := u.Query()
	var (
		active  []variable
		missing []string
	)
	for _, vr := range variables() {
		if vr.matches(query) {
			active = append(active, vr)
		}
	}
	if len(active) == 0 {
		return raw, nil, nil
	}
	for _, vr := range active {
		val := vr.value(v)
		if val == "" {
			missing = append(missing, vr.key)
			continue
		}
		vr.replace(query, val)
	}
	u.RawQuery = query.Encode()
	return u.String(), missing, nil
}

// DefaultHostname is the hostname Talos v1.13 uses before it has a config
// and when DHCP gives none: "talos-" and the node address with its dots (or
// colons) turned into dashes (or removed), as in HostnameConfigController.
func DefaultHostname(addr string) string {
	if addr == "" {
		return ""
	}
	return "talos-" + strings.ReplaceAll(strings.ReplaceAll(addr, ":", ""), ".", "-")
}

// NetbootOnly are the parameters a netboot adds that the installed system's
// command line does not carry: Talos boots its UKI's built-in command line
// after install (cmd/installer/pkg/install/install.go: the PXE arguments
// reach the disk only on the legacy GRUB path with grubUseUKICmdline off),
// so talos.config=, the events sink and the kernel log endpoint are gone.
// initrd= and BOOTIF= are the boot loader's; rackboot.lab.* are the lab's.
var NetbootOnly = []string{
	KeyConfig, "talos.config.inline", "talos.config.early", KeyEventsSink, KeyLoggingKernel,
	"initrd", "BOOTIF",
}

// KeyLoggingKernel is Talos's kernel log endpoint parameter.
const KeyLoggingKernel = "talos.logging.kernel"

// Installed is the command line of the installed system's loader entry: c
// without NetbootOnly and rackboot.lab.* parameters, every other value kept
// in order (quoted when it holds a space).
func (c *Cmdline) Installed() string {
	var out []string
	for _, k := range c.keys {
		if slices.Contains(NetbootOnly, k) || strings.HasPrefix(k, "rackboot.lab.") {
			continue
		}
		for _, v := range c.values[k] {
			p := k
			if v != "" {
				if strings.ContainsAny(v, " \t") {
					v = `"` + v + `"`
				}
				p += "=" + v
			}
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}
