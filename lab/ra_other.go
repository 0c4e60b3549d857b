//go:build !linux

package lab

import (
	"context"
	"log/slog"
	"net"
)

// RACommand is the argument that runs the lab's router advertisement
// responder; it only does so on Linux.
const RACommand = "__rackboot-lab-ra"

// RAConfig configures the responder (see the Linux build).
type RAConfig struct {
	Interface string
}

// RAServer is the router advertisement responder; it needs Linux.
type RAServer struct{}

// RAOption configures an RAServer.
type RAOption func(*RAServer)

// WithRALogger sets the logger.
func WithRALogger(*slog.Logger) RAOption { return func(*RAServer) {} }

// WithRAConn sets the socket.
func WithRAConn(net.PacketConn) RAOption { return func(*RAServer) {} }

// NewRA needs Linux: it returns ErrNeedsLinux.
func NewRA(RAConfig, ...RAOption) (*RAServer, error) { return nil, ErrNeedsLinux }

// Serve needs Linux: it returns ErrNeedsLinux.
func (*RAServer) Serve(context.Context) error { return ErrNeedsLinux }

// Stats is zero outside Linux.
func (*RAServer) Stats() RAStats { return RAStats{} }
