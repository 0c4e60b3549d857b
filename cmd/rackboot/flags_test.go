package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// allCommands is every command of the real tree by its path
// ("rackboot image iso").
func allCommands(root *cobra.Command) map[string]*cobra.Command {
	cmds := map[string]*cobra.Command{}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		cmds[c.CommandPath()] = c
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return cmds
}

// eachFlag calls fn for every flag a command accepts: its own and those it
// inherits.
func eachFlag(c *cobra.Command, fn func(*pflag.Flag)) {
	c.LocalFlags().VisitAll(fn)
	c.InheritedFlags().VisitAll(fn)
}

// TestKernelArgKeepsCommas: a kernel argument with a comma (a serial console
// with its speed) is one argument, and each --kernel-arg is one more; pflag's
// string slices would split it in two.
func TestKernelArgKeepsCommas(t *testing.T) {
	want := []string{"console=ttyS0,115200n8", "talos.dashboard.disabled=1"}
	found := 0
	for path, c := range allCommands(newRootCmd()) {
		if c.Flags().Lookup("kernel-arg") == nil {
			continue
		}
		found++
		t.Run(path, func(t *testing.T) {
			if err := c.ParseFlags([]string{"--kernel-arg", want[0], "--kernel-arg=" + want[1]}); err != nil {
				t.Fatal(err)
			}
			got, err := c.Flags().GetStringArray("kernel-arg")
			if err != nil {
				t.Fatalf("--kernel-arg is not a string array: %v", err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("--kernel-arg gave %q, want %q", got, want)
			}
		})
	}
	// serve, up, image iso, image usb.
	if found != 4 {
		t.Errorf("%d commands take --kernel-arg, want 4 (serve, up, image iso, image usb)", found)
	}
}

// TestNoCommaSplittingFlags: no flag splits its value on commas (pflag's
// StringSlice reads a value as CSV); repeat a string array flag instead.
func TestNoCommaSplittingFlags(t *testing.T) {
	for path, c := range allCommands(newRootCmd()) {
		eachFlag(c, func(f *pflag.Flag) {
			if typ := f.Value.Type(); strings.HasSuffix(typ, "Slice") {
				t.Errorf("%s --%s is a %s: its values are split on commas; use a StringArray", path, f.Name, typ)
			}
		})
	}
}

// TestFlagUsageHasNoBacktick: pflag takes the first `quoted` word of a usage
// string as the flag's value name and drops the backticks, so
// "(for `go tool pprof`)" rendered as "--cpuprofile go tool pprof".
func TestFlagUsageHasNoBacktick(t *testing.T) {
	for path, c := range allCommands(newRootCmd()) {
		eachFlag(c, func(f *pflag.Flag) {
			if strings.Contains(f.Usage, "`") {
				t.Errorf("%s --%s: usage has a backtick (pflag makes it the value name): %q", path, f.Name, f.Usage)
			}
		})
	}
}

// TestHelpRenders: every command's --help prints, its Long (or Short) text
// appears as written, and backticks in it come in pairs on one line.
func TestHelpRenders(t *testing.T) {
	for path := range allCommands(newRootCmd()) {
		t.Run(path, func(t *testing.T) {
			root := newRootCmd()
			args := append(strings.Fields(path)[1:], "--help")
			var out, errOut bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&errOut)
			root.SetArgs(args)
			if err := root.Execute(); err != nil {
				t.Fatalf("rackboot %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
			}
			c, _, err := root.Find(args[:len(args)-1])
			if err != nil {
				t.Fatal(err)
			}
			text := c.Long
			if text == "" {
				text = c.Short
			}
			if text == "" {
				t.Fatalf("%s has neither Long nor Short", path)
			}
			if !strings.Contains(out.String(), strings.TrimRightFunc(text, unicode.IsSpace)) {
				t.Errorf("help of %s does not show its text as written:\n%s", path, out.String())
			}
			for _, s := range []string{c.Short, c.Long} {
				for i, line := range strings.Split(s, "\n") {
					if strings.Count(line, "`")%2 != 0 {
						t.Errorf("%s line %d: unpaired backtick: %q", path, i+1, line)
					}
				}
			}
			// The flag lines: no backtick, and each value name is the flag's type.
			flags := false
			for _, line := range strings.Split(out.String(), "\n") {
				switch {
				case strings.HasSuffix(line, "Flags:"):
					flags = true
				case line == "":
					flags = false
				case flags && strings.Contains(line, "`"):
					t.Errorf("%s: flag line with a backtick: %q", path, line)
				}
			}
			eachFlag(c, func(f *pflag.Flag) {
				name, _ := pflag.UnquoteUsage(f)
				if want := valueName(f.Value.Type()); name != want {
					t.Errorf("%s --%s shows value name %q, want %q", path, f.Name, name, want)
				}
			})
		})
	}
}

// valueName is the value name pflag shows for a flag of type typ whose usage
// names none.
func valueName(typ string) string {
	switch typ {
	case "bool":
		return ""
	case "float64":
		return "float"
	case "int64":
		return "int"
	case "uint64":
		return "uint"
	case "stringSlice":
		return "strings"
	case "intSlice":
		return "ints"
	case "uintSlice":
		return "uints"
	case "boolSlice":
		return "bools"
	}
	return typ
}

// TestLabDemoAlwaysWaits: lab demo waits for the machines and takes the lab
// down; it takes no --no-wait (it used to accept and ignore it).
func TestLabDemoAlwaysWaits(t *testing.T) {
	c, _, err := newRootCmd().Find([]string{"lab", "demo"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Flags().Lookup("no-wait") != nil {
		t.Error("lab demo has --no-wait")
	}
	up, _, err := newRootCmd().Find([]string{"lab", "up"})
	if err != nil {
		t.Fatal(err)
	}
	if up.Flags().Lookup("no-wait") == nil {
		t.Error("lab up lost --no-wait")
	}
}
