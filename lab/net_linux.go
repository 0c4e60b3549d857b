//go:build linux

package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named namespaces are bound (as `ip netns` does).
const netnsDir = "/run/netns"

func namespaceExists(name string) bool {
	_, err := os.Lstat(filepath.Join(netnsDir, name))
	return err == nil
}

// onThread runs f on a locked OS thread. When f leaves the thread in a state
// it cannot undo (keep is false), the thread stays locked and dies with the
// goroutine, so no other goroutine ever runs in a foreign namespace.
func onThread(f func() (keep bool, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		keep, err := f()
		if keep {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// inNamespace runs f on a thread inside the named namespace, then moves the
// thread back. Programs started by f (exec on the same locked thread) are
// born in the namespace.
func inNamespace(name string, f func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", name, err)
	}
	defer target.Close()
	return onThread(func() (bool, error) {
		orig, err := netns.Get()
		if err != nil {
			return true, fmt.Errorf("open this thread's namespace: %w", err)
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			return true, fmt.Errorf("enter namespace %s: %w", name, err)
		}
		now, err := netns.Get()
		if err != nil || !now.Equal(target) {
			now.Close()
			return false, fmt.Errorf("enter namespace %s: the thread is not in it", name)
		}
		now.Close()
		ferr := f()
		if err := netns.Set(orig); err != nil {
			return false, errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", name, err))
		}
		return true, ferr
	})
}

// createNamespace makes a named network namespace (like `ip netns add`).
func createNamespace(name string) error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	return onThread(func() (bool, error) {
		orig, err := netns.Get()
		if err != nil {
			return true, fmt.Errorf("open this thread's namespace: %w", err)
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			return false, errors.Join(err, fmt.Errorf("return to the host namespace: %w", serr))
		}
		if err != nil {
			return true, fmt.Errorf("create namespace %s: %w", name, err)
		}
		return true, nil
	})
}

// deleteNamespace removes a named namespace (like `ip netns del`); its
// interfaces (bridge, taps, veths) go with it once no process is left in it.
// A missing namespace is not an error.
func deleteNamespace(name string) error {
	p := filepath.Join(netnsDir, name)
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete namespace %s: unmount: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// noRouterAdverts makes the namespace ignore IPv6 router advertisements, so
// no default route can appear later. It must run inside the namespace.
func noRouterAdverts() error {
	for _, conf := range []string{"all", "default"} {
		p := "/proc/sys/net/ipv6/conf/" + conf + "/accept_ra"
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return nil // no IPv6 in this kernel
		}
		if err := os.WriteFile(p, []byte("0\n"), 0o644); err != nil {
			return fmt.Errorf("turn off IPv6 router advertisements: %w", err)
		}
	}
	return nil
}

func linkUp(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return l, nil
}

func addAddr(h *netlink.Handle, l netlink.Link, p netip.Prefix) error {
	ipn := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

// setupLabNetwork fills the lab namespace: loopback, the bridge with the
// server's address, one tap per VM NIC, and (proxy mode) the veth to the router
// namespace, whose end gets the gateway address. record is called with each
// interface name before it is created.
func setupLabNetwork(p *Plan, record func(kind, name string) error) error {
	var routerFd netns.NsHandle = -1
	if p.RouterNamespace != "" {
		h, err := netns.GetFromName(p.RouterNamespace)
		if err != nil {
			return fmt.Errorf("open namespace %s: %w", p.RouterNamespace, err)
		}
		defer h.Close()
		routerFd = h
	}
	err := inNamespace(p.Namespace, func() error {
		if err := noRouterAdverts(); err != nil {
			return err
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		if _, err := linkUp(h, "lo"); err != nil {
			return err
		}
		if err := record("bridge", Bridge); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", Bridge, err)
		}
		brl, err := linkUp(h, Bridge)
		if err != nil {
			return err
		}
		if err := addAddr(h, brl, p.ServerAddr); err != nil {
			return err
		}
		for _, vm := range p.VMs {
			for _, name := range vm.Taps() {
				if err := record("tap", name); err != nil {
					return err
				}
				tap := &netlink.Tuntap{
					LinkAttrs: netlink.LinkAttrs{Name: name},
					Mode:      netlink.TUNTAP_MODE_TAP,
					Flags:     netlink.TUNTAP_TUN_EXCL | netlink.TUNTAP_NO_PI,
				}
				if err := h.LinkAdd(tap); err != nil {
					return fmt.Errorf("create tap %s for %s: %w", name, vm.Name, err)
				}
				for _, f := range tap.Fds { // persistent: QEMU attaches later
					f.Close()
				}
				tl, err := h.LinkByName(name)
				if err != nil {
					return fmt.Errorf("find tap %s: %w", name, err)
				}
				if err := h.LinkSetMaster(tl, brl); err != nil {
					return fmt.Errorf("put tap %s on %s: %w", name, Bridge, err)
				}
				if _, err := linkUp(h, name); err != nil {
					return err
				}
			}
		}
		if p.RouterNamespace == "" {
			return nil
		}
		if err := record("veth", routerVeth); err != nil {
			return err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: routerVeth},
			PeerName:      routerIface,
			PeerNamespace: netlink.NsFd(routerFd),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s to namespace %s: %w", routerVeth, p.RouterNamespace, err)
		}
		vl, err := h.LinkByName(routerVeth)
		if err != nil {
			return fmt.Errorf("find %s: %w", routerVeth, err)
		}
		if err := h.LinkSetMaster(vl, brl); err != nil {
			return fmt.Errorf("put %s on %s: %w", routerVeth, Bridge, err)
		}
		_, err = linkUp(h, routerVeth)
		return err
	})
	if err != nil || p.RouterNamespace == "" {
		return err
	}
	return inNamespace(p.RouterNamespace, func() error {
		if err := noRouterAdverts(); err != nil {
			return err
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		if _, err := linkUp(h, "lo"); err != nil {
			return err
		}
		l, err := linkUp(h, routerIface)
		if err != nil {
			return err
		}
		return addAddr(h, l, p.RouterAddr)
	})
}

// DefaultRoutes lists the default routes (IPv4 or IPv6, any table) of a
// named namespace. A lab refuses to boot anything while there is one.
func DefaultRoutes(namespace string) ([]string, error) {
	var out []string
	err := inNamespace(namespace, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes in %s: %w", namespace, err)
		}
		for _, r := range routes {
			if isDefaultDst(r.Dst) {
				out = append(out, r.String())
			}
		}
		return nil
	})
	return out, err
}

// isDefaultDst reports whether a route destination is a default route
// (none, 0.0.0.0/0 or ::/0).
func isDefaultDst(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// checkNoDefaultRoute fails when any of the namespaces has a default route.
func checkNoDefaultRoute(namespaces []string) error {
	for _, ns := range namespaces {
		routes, err := DefaultRoutes(ns)
		if err != nil {
			return err
		}
		if len(routes) > 0 {
			return fmt.Errorf("namespace %s has a default route (%v): the lab must not reach any other network, refusing to boot", ns, routes)
		}
	}
	return nil
}
