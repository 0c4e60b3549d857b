// Package status shows the machine inventory: a live HTML page, a JSON API
// and Prometheus metrics, plus a terminal table for `rackboot status`.
package status

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dotfile/rackboot/inventory"
)

//go:embed web
var webFS embed.FS

// Source is what the status handler reads; *inventory.Store is one.
type Source interface {
	Machines() []inventory.Machine
	Stats() inventory.Stats
}

// MachinesResponse is the body of GET /api/machines.
type MachinesResponse struct {
	Time time.Time `json:"time"`
	// Stages lists every stage in boot order, then side stages.
	Stages   []string            `json:"stages"`
	Machines []inventory.Machine `json:"machines"`
}

// Option configures the handler.
type Option func(*options)

type options struct {
	log        *slog.Logger
	now        func() time.Time
	collectors []prometheus.Collector
	gatherers  []prometheus.Gatherer
	drops      *dropCollector
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock that stamps API answers (default time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithCollectors adds collectors (e.g. the netboot servers' own metrics) to
// the handler's private registry.
func WithCollectors(cs ...prometheus.Collector) Option {
	return func(o *options) { o.collectors = append(o.collectors, cs...) }
}

// WithGatherers adds whole metric registries (e.g. the registry mirror's)
// to what /metrics serves.
func WithGatherers(gs ...prometheus.Gatherer) Option {
	return func(o *options) { o.gatherers = append(o.gatherers, gs...) }
}

// WithDropCounters shows what the Talos events sink and the kernel log
// receiver dropped, read at scrape time (talosevents' Server.Dropped and
// KmsgReceiver.Dropped): rackboot_events_dropped_total{reason} and
// rackboot_kernel_log_dropped_total{reason}. Either may be nil (not served).
func WithDropCounters(events, kernelLog func() map[string]uint64) Option {
	return func(o *options) { o.drops = newDropCollector(events, kernelLog) }
}

// Handler serves GET / (the live page and its assets), GET /api/machines
// (JSON) and GET /metrics (Prometheus, from a private registry). It fails
// only if a collector cannot be registered.
func Handler(src Source, opts ...Option) (http.Handler, error) {
	o := options{log: slog.New(slog.DiscardHandler), now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(newCollector(src)); err != nil {
		return nil, fmt.Errorf("register inventory metrics: %w", err)
	}
	if o.drops != nil {
		o.collectors = append(o.collectors, o.drops)
	}
	for _, c := range o.collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register collector: %w", err)
		}
	}
	static, err := fs.Sub(webFS, "web")
	if err != nil {
		return nil, fmt.Errorf("status page assets: %w", err)
	}
	mux := http.NewServeMux()
	gather := append(prometheus.Gatherers{reg}, o.gatherers...)
	mux.Handle("GET /metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{ErrorLog: slogPromLogger{o.log}}))
	mux.HandleFunc("GET /api/machines", func(w http.ResponseWriter, r *http.Request) {
		resp := MachinesResponse{Time: o.now().UTC(), Stages: inventory.Stages(), Machines: src.Machines()}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		if err := enc.Encode(resp); err != nil {
			o.log.Debug("status: write /api/machines", "err", err)
		}
	})
	files := http.FileServerFS(static)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /app.js", func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /style.css", func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		files.ServeHTTP(w, r)
	})
	return mux, nil
}

func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
}

type slogPromLogger struct{ l *slog.Logger }

func (s slogPromLogger) Println(v ...any) { s.l.Warn("metrics", "err", fmt.Sprint(v...)) }

// collector turns an inventory snapshot into metrics at scrape time.
type collector struct {
	src       Source
	machines  *prometheus.Desc
	installed *prometheus.Desc
	events    *prometheus.Desc
	logLines  *prometheus.Desc
	pulled    *prometheus.Desc
	images    *prometheus.Desc
}

func newCollector(src Source) *collector {
	return &collector{
		src:       src,
		machines:  prometheus.NewDesc("rackboot_machines", "Machines by current stage.", []string{"stage"}, nil),
		installed: prometheus.NewDesc("rackboot_machines_installed", "Machines with Talos installed on their disk.", nil, nil),
		events:    prometheus.NewDesc("rackboot_events_total", "Stage events recorded (netboot and Talos), replays included.", []string{"stage"}, nil),
		logLines:  prometheus.NewDesc("rackboot_kernel_log_lines_total", "Kernel log lines received from machines.", nil, nil),
		pulled:    prometheus.NewDesc("rackboot_registry_pulled_bytes_total", "Bytes each machine pulled from the registry mirror since serve started.", []string{"machine"}, nil),
		images:    prometheus.NewDesc("rackboot_registry_pulled_images", "Distinct images whose manifest each machine pulled from the registry mirror since serve started.", []string{"machine"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.machines
	ch <- c.installed
	ch <- c.events
	ch <- c.logLines
	ch <- c.pulled
	ch <- c.images
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	byStage := map[string]int{}
	for _, s := range inventory.Stages() {
		byStage[s] = 0
	}
	installed := 0
	for _, m := range c.src.Machines() {
		byStage[m.Stage]++
		if m.Installed {
			installed++
		}
		if p := m.Pulled; p != nil {
			ch <- prometheus.MustNewConstMetric(c.pulled, prometheus.CounterValue, float64(p.Bytes), m.Key)
			ch <- prometheus.MustNewConstMetric(c.images, prometheus.GaugeValue, float64(p.ImageCount), m.Key)
		}
	}
	for s, n := range byStage {
		ch <- prometheus.MustNewConstMetric(c.machines, prometheus.GaugeValue, float64(n), s)
	}
	ch <- prometheus.MustNewConstMetric(c.installed, prometheus.GaugeValue, float64(installed))
	st := c.src.Stats()
	for s, n := range st.Events {
		ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(n), s)
	}
	ch <- prometheus.MustNewConstMetric(c.logLines, prometheus.CounterValue, float64(st.LogLines))
}

// dropCollector reads the dropped counters at scrape time.
type dropCollector struct {
	events, kernelLog         func() map[string]uint64
	eventsDesc, kernelLogDesc *prometheus.Desc
}

func newDropCollector(events, kernelLog func() map[string]uint64) *dropCollector {
	return &dropCollector{
		events:        events,
		kernelLog:     kernelLog,
		eventsDesc:    prometheus.NewDesc("rackboot_events_dropped_total", "Talos events dropped, by reason (e.g. unattributed: from an address no machine is known at).", []string{"reason"}, nil),
		kernelLogDesc: prometheus.NewDesc("rackboot_kernel_log_dropped_total", "Kernel log records dropped, by reason (unattributed, malformed...).", []string{"reason"}, nil),
	}
}

func (c *dropCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.eventsDesc
	ch <- c.kernelLogDesc
}

func (c *dropCollector) Collect(ch chan<- prometheus.Metric) {
	collectCounts(ch, c.eventsDesc, c.events)
	collectCounts(ch, c.kernelLogDesc, c.kernelLog)
}

func collectCounts(ch chan<- prometheus.Metric, d *prometheus.Desc, read func() map[string]uint64) {
	if read == nil {
		return
	}
	for reason, n := range read() {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), reason)
	}
}

// Fetch reads /api/machines from a running rackboot at base (e.g.
// http://127.0.0.1:8080).
func Fetch(ctx context.Context, c *http.Client, base string) (*MachinesResponse, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("fetch status: server %q is not an http(s) URL", base)
	}
	u = u.JoinPath("api", "machines")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("fetch status from %s: %w", u, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch status from %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch status from %s: %s", u, resp.Status)
	}
	var out MachinesResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("fetch status from %s: decode: %w", u, err)
	}
	return &out, nil
}

// WriteTable prints machines as an aligned table, one row per machine.
func WriteTable(w io.Writer, ms []inventory.Machine, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMAC\tADDRESS\tSTAGE\tINSTALLED\tPULLED\tLAST SEEN\tDETAIL")
	for _, m := range ms {
		addr := "-"
		if m.Addr.IsValid() {
			addr = m.Addr.String()
		}
		macs := "-"
		if len(m.MACs) > 0 {
			macs = strings.Join(m.MACs, ",")
		}
		name := m.Name
		if name == "" {
			name = "(unknown)"
		}
		installed := "no"
		if m.Installed {
			installed = "yes"
		}
		stage := m.Stage
		if stage == "" {
			stage = "not seen yet"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", oneLine(name), macs, addr, oneLine(stage), installed, PulledText(m.Pulled), ago(now, m.LastSeen), oneLine(m.Detail))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write status table: %w", err)
	}
	return nil
}

// PulledText is what a machine pulled from the registry mirror, for a
// table cell: "-" or e.g. "3 images, 812.4 MiB".
func PulledText(p *inventory.Pulled) string {
	if p == nil {
		return "-"
	}
	unit := "images"
	if p.ImageCount == 1 {
		unit = "image"
	}
	return fmt.Sprintf("%d %s, %s", p.ImageCount, unit, humanBytes(p.Bytes))
}

func humanBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	}
}

// oneLine keeps a value on its row: no tabs, newlines or control characters.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return t.UTC().Format("2006-01-02 15:04")
	}
}
