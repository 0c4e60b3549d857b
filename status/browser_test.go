package status

import (
	"context"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

// chromiumDOM loads url in headless Chromium, lets the page's JavaScript run
// for budget of virtual time, and returns the rendered DOM.
func chromiumDOM(t *testing.T, url string, budget time.Duration) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (%v): install the Debian package: apt-get install chromium", err)
	}
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(),
		"--virtual-time-budget="+itoa(int(budget/time.Millisecond)),
		"--dump-dom", url)
	cmd.Env = append(os.Environ(), "HOME="+home)
	// Chromium forks helpers: run it in its own process group and end that
	// group (ours alone) if it hangs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\nstderr:\n%s", url, err, tail(stderr.String(), 2000))
	}
	return string(out)
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// shown is what the rendered page shows for one machine.
type shown struct {
	stage    string   // data-stage of the stage cell
	label    string   // the visible stage text
	timeline []string // data-stage of each timeline entry
	log      string
	pulled   string // the registry mirror cell
}

// findMachine reads the row of machine key out of a dumped DOM.
func findMachine(t *testing.T, dom, key string) (shown, bool) {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(dom))
	if err != nil {
		t.Fatalf("parse dumped DOM: %v", err)
	}
	var row *html.Node
	walk(doc, func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == "tr" && attr(n, "data-key") == key {
			row = n
		}
	})
	if row == nil {
		return shown{}, false
	}
	var s shown
	walk(row, func(n *html.Node) {
		if n.Type != html.ElementNode {
			return
		}
		switch {
		case n.Data == "td" && attr(n, "class") == "stage":
			s.stage = attr(n, "data-stage")
			if c := n.FirstChild; c != nil && c.Data == "span" {
				s.label = text(c)
			}
		case n.Data == "li":
			s.timeline = append(s.timeline, attr(n, "data-stage"))
		case n.Data == "pre" && attr(n, "class") == "log":
			s.log = text(n)
		case n.Data == "td" && attr(n, "class") == "pulled":
			s.pulled = text(n)
		}
	})
	return s, true
}

func walk(n *html.Node, f func(*html.Node)) {
	f(n)
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		walk(c, f)
	}
}

func attr(n *html.Node, name string) string {
	for _, a := range n.Attr {
		if a.Key == name {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	walk(n, func(c *html.Node) {
		if c.Type == html.TextNode {
			b.WriteString(c.Data)
		}
	})
	return b.String()
}

// TestBrowserShowsStageChanges loads the status page in headless Chromium
// while the machine moves from dhcp to installing, and reads the stage the
// page's JavaScript rendered.
func TestBrowserShowsStageChanges(t *testing.T) {
	st := store(t)
	st.Record(pxe.Event{Name: "cp1", MAC: mustMAC(t, "02:00:00:00:00:01"), Addr: netip.MustParseAddr("10.99.0.10"), Stage: pxe.StageDHCP})
	st.Record(pxe.Event{MAC: mustMAC(t, "02:00:00:00:00:99"), Stage: pxe.StageDiscovered})
	if err := st.AddPull("cp1", "factory.talos.dev/metal-installer/x:v1.13.0", true, 2048); err != nil {
		t.Fatal(err)
	}
	if err := st.AddPull("cp1", "", false, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := st.AddLog("cp1", inventory.LogLine{Msg: "<script>document.title='pwned'</script>"}); err != nil {
		t.Fatal(err)
	}
	h, err := Handler(st)
	if err != nil {
		t.Fatal(err)
	}
	var (
		polls    atomic.Int64
		moveOnce sync.Once
		armed    atomic.Bool
	)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/machines" {
			// The second poll of an armed run sees the machine installing:
			// only a page that keeps polling can show it.
			if polls.Add(1) >= 2 && armed.Load() {
				moveOnce.Do(func() {
					if err := st.MarkStage("cp1", inventory.StageInstalling, "install sequence started"); err != nil {
						t.Error(err)
					}
				})
			}
		}
		h.ServeHTTP(w, r)
	}))

	// First load: the page shows the machine at dhcp.
	dom := chromiumDOM(t, srv.URL+"/", 2500*time.Millisecond)
	before, ok := findMachine(t, dom, "cp1")
	if !ok {
		t.Fatalf("cp1 not on the rendered page (%d API polls):\n%s", polls.Load(), tail(dom, 3000))
	}
	if before.stage != pxe.StageDHCP || before.label != pxe.StageDHCP {
		t.Fatalf("first load shows stage %q (label %q), want dhcp", before.stage, before.label)
	}
	if _, ok := findMachine(t, dom, "02:00:00:00:00:99"); !ok {
		t.Fatal("the unknown machine is not on the page")
	}
	if before.pulled != "1 image, 3.0 MiB" {
		t.Errorf("pulled cell = %q, want 1 image, 3.0 MiB", before.pulled)
	}
	if before.log != "<script>document.title='pwned'</script>" || strings.Contains(dom, "<title>pwned") {
		t.Fatalf("log line not shown as text: %q", before.log)
	}

	// Second load: the machine moves while the page is open.
	polls.Store(0)
	armed.Store(true)
	dom = chromiumDOM(t, srv.URL+"/", 3500*time.Millisecond)
	after, ok := findMachine(t, dom, "cp1")
	if !ok {
		t.Fatalf("cp1 not on the rendered page:\n%s", tail(dom, 3000))
	}
	if n := polls.Load(); n < 2 {
		t.Fatalf("the page polled /api/machines %d time(s) in 3.5 s, want at least 2", n)
	}
	if after.stage != inventory.StageInstalling || after.label != inventory.StageInstalling {
		t.Fatalf("after the move the page shows %q (label %q), want installing", after.stage, after.label)
	}
	if strings.Join(after.timeline, ",") != "dhcp,installing" {
		t.Fatalf("timeline shown: %v", after.timeline)
	}
	if before.stage == after.stage {
		t.Fatal("the shown stage did not change")
	}
}

// TestBrowserShowsBlockedMachines: a machine of the rack that never booted
// shows by name as "not seen yet"; one whose boot assets are missing shows
// cannot-boot with the message and the command that fixes it.
func TestBrowserShowsBlockedMachines(t *testing.T) {
	st := store(t)
	st.Declare("urban", "lailah")
	msg := "no Talos v1.13.0 kernel for schematic 376567988ad3 (amd64) in the asset cache: run `rackboot assets pull`"
	st.Record(pxe.Event{Name: "lailah", Stage: pxe.StageCannotBoot, Detail: msg})
	h, err := Handler(st)
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, h)
	dom := chromiumDOM(t, srv.URL+"/", 2500*time.Millisecond)
	urban, ok := findMachine(t, dom, "urban")
	if !ok || urban.stage != "" || urban.label != "not seen yet" {
		t.Fatalf("urban (never booted) shown as %+v, %v; want by name, not seen yet:\n%s", urban, ok, tail(dom, 3000))
	}
	lailah, ok := findMachine(t, dom, "lailah")
	if !ok || lailah.stage != pxe.StageCannotBoot || lailah.label != pxe.StageCannotBoot {
		t.Fatalf("lailah shown as %+v, %v; want cannot-boot", lailah, ok)
	}
	if !strings.Contains(dom, "rackboot assets pull") {
		t.Fatal("the fix is not on the page")
	}
}
