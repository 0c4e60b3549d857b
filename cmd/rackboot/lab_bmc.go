package main

import (
	"crypto/rand"
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/profiles"
)

// The lab's virtual BMCs (lab package) accept a password the lab makes
// up: one per machine with a bmc:, new for every lab, kept only in the
// lab's serve state directory (bmc-passwords.yaml, 0600), where `lab exec
// -- rackboot power ...` finds it. The user's own BMC passwords are never
// used or copied: they belong to the real BMCs.

// labBMCPasswords makes a random password for every machine of r with a
// bmc: (the plan uses those it gives a virtual BMC). 16 letters and
// digits: within IPMI's 20 bytes, nothing a config file must quote.
func labBMCPasswords(r *profiles.Rack) map[string]string {
	pw := map[string]string{}
	for _, m := range r.Machines {
		if m.BMC != nil {
			pw[m.Name] = rand.Text()[:16]
		}
	}
	return pw
}

// addBMCPasswords puts the passwords of the plan's virtual BMCs into
// serve's state directory (bmc-passwords.yaml, written 0600 by the lab).
func addBMCPasswords(s *lab.ProcessSpec, plan *lab.Plan, pw map[string]string) error {
	use := map[string]string{}
	for _, vm := range plan.VMs {
		if vm.BMC != nil {
			use[vm.Name] = pw[vm.Name]
		}
	}
	if len(use) == 0 {
		return nil
	}
	data, err := yaml.Marshal(use)
	if err != nil {
		return fmt.Errorf("the lab's BMC passwords: %w", err)
	}
	if s.Files == nil {
		s.Files = map[string][]byte{}
	}
	s.Files[profiles.BMCPasswordsFile] = data
	return nil
}

// bmcWords is a VM's BMC in the lab table: "ipmi 192.168.1.33:623", "-".
func bmcWords(b *lab.BMCState) string {
	if b == nil {
		return "-"
	}
	if b.URL != "" {
		return b.Protocol + " " + b.URL
	}
	return b.Protocol + " " + b.Address
}
