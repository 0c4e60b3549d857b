//go:build !linux

package lab

import "os/exec"

// Start needs Linux.
func (l *Lab) Start(*exec.Cmd) error { return ErrNeedsLinux }

// Run needs Linux.
func (l *Lab) Run(*exec.Cmd) error { return ErrNeedsLinux }
