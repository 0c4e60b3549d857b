// Package report is the one machine-readable line the stand-in prints on
// the serial console before it powers off, and its parser for the host side.
package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Prefix starts the report line.
const Prefix = "RACKBOOT-STANDIN-REPORT "

// Results.
const (
	ResultInstalled = "installed" // wrote the META marker on the install disk
	ResultBooted    = "booted"    // found META already (netbooted): ran the boot sequence, powered off
	ResultRunning   = "running"   // booted from its own disk: ran the boot sequence and stays up
	ResultFailed    = "failed"    // see Error
)

// Disk is one disk the stand-in saw.
type Disk struct {
	Dev       string `json:"dev"`
	Transport string `json:"transport"`
	Serial    string `json:"serial,omitempty"`
	Model     string `json:"model,omitempty"`
	Size      uint64 `json:"size"`
	HasMeta   bool   `json:"has_meta"`
}

// Link is one network link the stand-in ran DHCP on.
type Link struct {
	Name string `json:"name"`
	MAC  string `json:"mac"`
	IP   string `json:"ip,omitempty"` // "" when DHCP had not finished
}

// Report is what one boot of the stand-in did. It never carries the
// config's content or URL (which holds a token), only its hash.
type Report struct {
	Name         string `json:"name"`
	MAC          string `json:"mac"`
	IP           string `json:"ip,omitempty"`
	UUID         string `json:"uuid,omitempty"`
	Serial       string `json:"serial,omitempty"`
	Links        []Link `json:"links,omitempty"`       // every link, the first is the primary (MAC, IP)
	ConfigSource string `json:"config_source"`         // "http", "metal-iso", "state" (the install disk's STATE) or ""
	ConfigFrom   string `json:"config_from,omitempty"` // http: the local address of the (last) fetch
	ConfigSHA256 string `json:"config_sha256"`
	InstallDisk  string `json:"install_disk"`
	Disks        []Disk `json:"disks"`
	SDUntouched  bool   `json:"sd_untouched"`
	EventsSent   int    `json:"events_sent"`
	// EventSink is where events went last, EventSinkFrom "cmdline" or
	// "config" (EventSinkConfig); KmsgLog the kernel log destinations
	// (talos.logging.kernel= and KmsgLogConfig documents; streamed only
	// when running from disk).
	EventSink     string   `json:"event_sink,omitempty"`
	EventSinkFrom string   `json:"event_sink_from,omitempty"`
	KmsgLog       []string `json:"kmsg_log,omitempty"`
	// Cmdline is the kernel command line when it holds no talos.config=
	// (which carries a token): the installed system's loader entry.
	Cmdline string `json:"cmdline,omitempty"`
	// The installer image an install pulled (machine.install.image,
	// through the config's registry mirrors, as Talos): its reference,
	// the digest it resolved to (an index or a manifest), the endpoint
	// that answered (a mirror, or https://<registry> as the fallback), the
	// bytes downloaded by the pull that succeeded, and the attempts.
	InstallerImage    string `json:"installer_image,omitempty"`
	InstallerDigest   string `json:"installer_digest,omitempty"`
	InstallerEndpoint string `json:"installer_endpoint,omitempty"`
	InstallerBytes    int64  `json:"installer_bytes,omitempty"`
	InstallerAttempts int    `json:"installer_attempts,omitempty"`
	// Partitions on the install disk after an install, in order.
	Partitions []string `json:"partitions,omitempty"`
	// UEFI only (efivarfs): the boot option the firmware started
	// (BootCurrent and its description), Talos's "Talos Linux UKI" boot
	// entry (the one an install wrote, or found at boot), and BootOrder
	// (after an install, else at boot).
	BootCurrent string `json:"boot_current,omitempty"`
	BootEntry   string `json:"boot_entry,omitempty"`
	BootOrder   string `json:"boot_order,omitempty"`
	// The network config applied from the machine config when running
	// from disk: aliases (link=alias), static addresses and VIPs
	// (address@link), and Talos's warnings (an alias skipped...).
	Aliases     []string `json:"aliases,omitempty"`
	Addresses   []string `json:"addresses,omitempty"`
	VIPs        []string `json:"vips,omitempty"`
	NetWarnings []string `json:"net_warnings,omitempty"`
	Result      string   `json:"result"`
	Error       string   `json:"error,omitempty"`
	Uptime      float64  `json:"uptime_seconds"`
}

// Line formats r as a single line (no newline) starting with Prefix.
func (r Report) Line() string {
	b, err := json.Marshal(r)
	if err != nil {
		// Only plain strings, numbers and bools: cannot happen.
		panic(fmt.Sprintf("marshal report: %v", err))
	}
	return Prefix + string(b)
}

// ErrNoReport is returned by Find when the log holds no report line.
var ErrNoReport = errors.New("no " + strings.TrimSpace(Prefix) + " line")

// Parse reads one report line (with or without Prefix, surrounding space
// and console carriage returns allowed).
func Parse(line string) (Report, error) {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, strings.TrimSpace(Prefix))
	var r Report
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Report{}, fmt.Errorf("parse stand-in report: %w", err)
	}
	if dec.More() {
		return Report{}, errors.New("parse stand-in report: trailing data after the JSON object")
	}
	switch r.Result {
	case ResultInstalled, ResultBooted, ResultRunning, ResultFailed:
	default:
		return Report{}, fmt.Errorf("parse stand-in report: unknown result %q", r.Result)
	}
	return r, nil
}

// Find returns the last report in a serial console log.
func Find(log []byte) (Report, error) {
	idx := bytes.LastIndex(log, []byte(Prefix))
	if idx < 0 {
		return Report{}, ErrNoReport
	}
	rest := log[idx:]
	if nl := bytes.IndexByte(rest, '\n'); nl >= 0 {
		rest = rest[:nl]
	}
	return Parse(string(rest))
}
