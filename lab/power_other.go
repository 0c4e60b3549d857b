//go:build !linux

package lab

import "context"

// VMPower needs Linux: it returns ErrNeedsLinux.
func (l *Lab) VMPower(context.Context, string) (VMPower, error) { return VMPower{}, ErrNeedsLinux }
