// Command delaylink joins two network namespaces with a point-to-point
// Ethernet link whose every frame is delayed by a fixed time, in user
// space. `make bench` uses it for the 1 ms RTT of row P2 because this
// machine's kernel has no netem qdisc. It creates one TAP device in each
// namespace, prints "ready" when both exist, and relays until SIGTERM;
// the devices disappear when it exits.
//
//	delaylink -a /run/netns/cli:dl0 -b /run/netns/srv:dl1 -delay 500us
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "delaylink:", err)
		os.Exit(1)
	}
}

// ParseEnd parses "NSFILE:TAPNAME".
func ParseEnd(s string) (End, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return End{}, fmt.Errorf("link end %q: want NAMESPACE-FILE:TAP-NAME", s)
	}
	e := End{NetNS: s[:i], Name: s[i+1:]}
	if len(e.Name) > 15 || strings.ContainsAny(e.Name, "/ ") {
		return End{}, fmt.Errorf("link end %q: bad interface name %q", s, e.Name)
	}
	return e, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("delaylink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	aFlag := fs.String("a", "", "first end, NAMESPACE-FILE:TAP-NAME")
	bFlag := fs.String("b", "", "second end, NAMESPACE-FILE:TAP-NAME")
	delay := fs.Duration("delay", 500*time.Microsecond, "one-way delay (the RTT is twice this plus the relay's own time)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *delay < 0 {
		return errors.New("-delay must not be negative")
	}
	a, err := ParseEnd(*aFlag)
	if err != nil {
		return err
	}
	b, err := ParseEnd(*bFlag)
	if err != nil {
		return err
	}
	fa, err := OpenTAP(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := OpenTAP(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	l := &Link{Delay: *delay}
	fmt.Fprintln(stdout, "ready")
	err = l.Run(ctx, fa, fb)
	fmt.Fprintf(stderr, "delaylink: %d frames relayed, %d dropped\n", l.Frames(), l.Dropped())
	return err
}
