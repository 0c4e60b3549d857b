//go:build linux

package lab

import (
	"errors"
	"fmt"
	"os/exec"
)

// Start starts cmd inside the lab's namespace, as if on the rack network
// (`rackboot power …` reaching the lab's BMCs, say): the program is born there
// (its thread entered the namespace for the fork), whatever this process
// does next. It is not recorded in lab.json: the caller waits for it.
func (l *Lab) Start(cmd *exec.Cmd) error {
	if !namespaceExists(Namespace(l.name)) {
		return fmt.Errorf("lab %s: namespace %s: %w", l.name, Namespace(l.name), ErrNotUp)
	}
	if err := inNamespace(Namespace(l.name), cmd.Start); err != nil {
		return fmt.Errorf("lab %s: start %s: %w", l.name, cmd.Path, err)
	}
	return nil
}

// Run starts cmd inside the lab's namespace and waits for it.
func (l *Lab) Run(cmd *exec.Cmd) error {
	if err := l.Start(cmd); err != nil {
		return err
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("lab %s: %s: %w", l.name, cmd.Path, err)
	}
	return err
}
