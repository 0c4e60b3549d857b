//go:build !linux

package lab

import (
	"context"
	"net"
)

// DetectAccel is TCG outside Linux (the lab does not run there anyway).
func DetectAccel() Accel { return AccelTCG }

// Up needs Linux: it returns ErrNeedsLinux.
func (l *Lab) Up(context.Context, Spec) (*State, error) { return nil, ErrNeedsLinux }

// Down needs Linux: it returns ErrNeedsLinux.
func (l *Lab) Down(context.Context) (*DownReport, error) { return nil, ErrNeedsLinux }

// Status needs Linux: it returns ErrNeedsLinux.
func (l *Lab) Status() (*Status, error) { return nil, ErrNeedsLinux }

// InNamespace needs Linux: it returns ErrNeedsLinux.
func (l *Lab) InNamespace(int) (bool, error) { return false, ErrNeedsLinux }

// DialContext needs Linux: it returns ErrNeedsLinux.
func (l *Lab) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, ErrNeedsLinux
}
