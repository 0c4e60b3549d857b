package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"time"
)

func (l *Lab) vm(name string) (*VMState, error) {
	st, err := l.State()
	if err != nil {
		return nil, err
	}
	vm := st.VM(name)
	if vm == nil {
		names := make([]string, len(st.VMs))
		for i, v := range st.VMs {
			names[i] = v.Name
		}
		return nil, fmt.Errorf("%q (lab %s has %s): %w", name, l.name, strings.Join(names, ", "), ErrUnknownVM)
	}
	return vm, nil
}

// Console copies a VM's serial log to w. With follow it keeps copying new
// output, like tail -f, until ctx is done (then it returns nil) or the log
// is removed (the lab went down).
func (l *Lab) Console(ctx context.Context, name string, w io.Writer, follow bool) error {
	vm, err := l.vm(name)
	if err != nil {
		return err
	}
	var f *os.File
	t := time.NewTicker(l.poll)
	defer t.Stop()
	for {
		if f == nil {
			f, err = os.Open(vm.SerialLog)
			switch {
			case err == nil:
				defer f.Close()
			case !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("console %s: %w", name, err)
			case !follow && vm.BMC != nil:
				return fmt.Errorf("console %s: no output yet: it has not been powered on (through its BMC at %s)", name, vm.BMC.Address)
			case !follow:
				return fmt.Errorf("console %s: no serial log yet at %s", name, vm.SerialLog)
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return fmt.Errorf("console %s: %w", name, err)
			}
			if !follow {
				return nil
			}
			if _, err := os.Stat(vm.SerialLog); errors.Is(err, fs.ErrNotExist) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// WaitSerial waits until a VM's serial console (cleaned of terminal control
// sequences, see CleanSerial) matches re, and returns the matching line.
func (l *Lab) WaitSerial(ctx context.Context, name string, re *regexp.Regexp) (string, error) {
	vm, err := l.vm(name)
	if err != nil {
		return "", err
	}
	t := time.NewTicker(l.poll)
	defer t.Stop()
	for {
		data, err := os.ReadFile(vm.SerialLog)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("wait for %s on %s's console: %w", re, name, err)
		}
		for _, line := range strings.Split(CleanSerial(data), "\n") {
			if re.MatchString(line) {
				return line, nil
			}
		}
		select {
		case <-ctx.Done():
			last := LastLine(data)
			return "", fmt.Errorf("wait for %q on %s's console (last line %q): %w", re, name, last, ctx.Err())
		case <-t.C:
		}
	}
}

// CleanSerial turns raw serial console output into plain text lines: it
// drops escape sequences (colours, cursor moves), carriage returns and
// other control characters, and applies backspaces.
func CleanSerial(b []byte) string {
	out := make([]byte, 0, len(b))
	lineStart := 0
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c == 0x1b: // ESC
			if i+1 < len(b) && b[i+1] == '[' { // CSI: parameters, then a final byte 0x40-0x7e
				j := i + 2
				for j < len(b) && (b[j] < 0x40 || b[j] > 0x7e) {
					j++
				}
				i = j
			} else {
				i++ // two-byte sequence such as ESC c
			}
		case c == '\b':
			if len(out) > lineStart {
				out = out[:len(out)-1]
			}
		case c == '\n':
			out = append(out, '\n')
			lineStart = len(out)
		case c == '\t' || c >= 0x20 && c != 0x7f:
			out = append(out, c)
		}
	}
	return string(out)
}

// LastLine is the last non-blank line of raw serial output, cleaned.
func LastLine(b []byte) string {
	lines := strings.Split(CleanSerial(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(lines[i]); s != "" {
			return s
		}
	}
	return ""
}

// lastLineOfFile reads at most the last 8 KiB of a serial log.
func lastLineOfFile(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 8 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > tail {
		if _, err := f.Seek(fi.Size()-tail, io.SeekStart); err != nil {
			return ""
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	return LastLine(data)
}
