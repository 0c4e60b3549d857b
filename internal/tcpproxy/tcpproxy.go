// Package tcpproxy forwards TCP connections from a listener to one address,
// for tests that need a path they can cut: a process in a network namespace
// reaching an API server on the host's loopback (or the host reaching a
// server inside a namespace: StartDial), or an API server that
// becomes unreachable for one client while others keep it. Two faults:
// Cut closes the listener and resets every connection (the server is gone:
// the client learns at once); Blackhole keeps accepting and keeps the
// client's connections open but forwards nothing more, in either
// direction (a pulled cable: requests hang until the client's own timeout).
//
//	p := tcpproxy.Start(ln, "127.0.0.1:6443")
//	defer p.Cut()
package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Proxy forwards connections accepted on a listener to a target.
type Proxy struct {
	ln   net.Listener
	dial func() (net.Conn, error)

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	cut    bool
	holed  bool
	upConn map[net.Conn]struct{} // the target side of each forwarded connection
	freed  chan struct{}         // closed by Cut: held connections may close
	wg     sync.WaitGroup
}

// Start forwards every connection accepted on ln to target until Cut.
func Start(ln net.Listener, target string) *Proxy {
	return StartDial(ln, func() (net.Conn, error) { return net.DialTimeout("tcp", target, 5*time.Second) })
}

// StartDial forwards every connection accepted on ln to a connection dial
// makes, until Cut: for a target the host cannot dial directly, such as an
// address inside another network namespace.
func StartDial(ln net.Listener, dial func() (net.Conn, error)) *Proxy {
	p := &Proxy{ln: ln, dial: dial, conns: map[net.Conn]struct{}{}, upConn: map[net.Conn]struct{}{},
		freed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p
}

// Addr is the listener's address.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed by Cut (or a listener error: nothing more to forward)
		}
		if !p.track(c) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *Proxy) forward(c net.Conn) {
	defer p.wg.Done()
	defer p.untrack(c)
	defer p.hold()
	if p.blackholed() {
		return
	}
	up, err := p.dial()
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.cut || p.holed {
		p.mu.Unlock()
		up.Close()
		return
	}
	p.upConn[up] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.upConn, up)
		p.mu.Unlock()
		up.Close()
	}()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Half-close so the other side sees EOF, as a direct connection
		// would; not in a blackhole, where the client must see nothing.
		if tc, ok := dst.(*net.TCPConn); ok && !p.blackholed() {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}

// hold keeps a client's connection open and silent while the proxy is a
// blackhole, until Cut.
func (p *Proxy) hold() {
	if p.blackholed() {
		<-p.freed
	}
}

func (p *Proxy) blackholed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.holed && !p.cut
}

// Blackhole stops forwarding without telling the client: its open
// connections stay open and get no more bytes, new ones are accepted and
// get none either. Cut ends it.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holed = true
	for up := range p.upConn {
		up.Close()
	}
}

// track adds c to the open connections; false once the proxy is cut.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// Cut stops forwarding: the listener is closed (new connections are
// refused) and every open connection is reset. It waits until the
// forwarding goroutines have ended. Cutting twice is harmless.
func (p *Proxy) Cut() error {
	p.mu.Lock()
	if !p.cut {
		close(p.freed)
	}
	p.cut = true
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST: the peer learns at once
		}
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
