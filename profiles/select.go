package profiles

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/uuid"
)

// ErrNoMatch is returned by Match when no machine of the rack is the booting
// one.
var ErrNoMatch = errors.New("no machine in the rack matches")

// ErrAmbiguous is returned by Match when several machines match equally well.
// Validate reports the duplicate selectors that cause it, so a valid rack
// never gives it.
var ErrAmbiguous = errors.New("several machines match")

// Specificity of a selector: the higher, the more specific.
const (
	specNone = iota
	specMAC
	specSerial
	specUUID
)

// Match finds the machine a booting client is. Any of mac, uuid and serial
// may be empty (a DHCP request knows no serial); what is given is compared
// with each machine's selectors:
//
//   - a machine whose selector contradicts what the client gave (another
//     UUID, another serial, a MAC not in its list) is not that client;
//   - among the rest, the machine matched by the most specific selector wins:
//     UUID, then serial, then MAC (like matchbox's SelectGroup, where the
//     group with the most selectors that all match wins);
//   - two machines matched at the same best level give ErrAmbiguous, none
//     gives ErrNoMatch.
//
// UUIDs compare case-insensitively and also in the mixed-endian form some PXE
// firmware reports; a placeholder UUID (all zeros or all ones) counts as not
// given. Serials compare case-insensitively, without surrounding spaces.
// Selectors that do not parse (Validate reports them) never match.
func (r *Rack) Match(mac net.HardwareAddr, uuidStr, serial string) (*Machine, error) {
	var (
		u     uuid.UUID
		haveU bool
		haveM = len(mac) > 0
	)
	serial = strings.TrimSpace(serial)
	if uuidStr != "" {
		if p, err := uuid.Parse(strings.TrimSpace(uuidStr)); err == nil && !placeholderUUID(p) {
			u, haveU = p, true
		}
	}
	client := describeClient(mac, u, haveU, serial)
	if !haveM && !haveU && serial == "" {
		return nil, fmt.Errorf("%w: the client gave no MAC, UUID or serial", ErrNoMatch)
	}

	best, bestSpec := []int(nil), specNone
	var near []string
	for i := range r.Machines {
		m := &r.Machines[i]
		spec, why := matchMachine(m, mac, u, haveU, serial)
		if spec == specNone {
			if why != "" {
				near = append(near, why)
			}
			continue
		}
		switch {
		case spec > bestSpec:
			best, bestSpec = []int{i}, spec
		case spec == bestSpec:
			best = append(best, i)
		}
	}
	switch len(best) {
	case 0:
		if len(near) > 0 {
			return nil, fmt.Errorf("%w %s (%s)", ErrNoMatch, client, strings.Join(near, "; "))
		}
		return nil, fmt.Errorf("%w %s", ErrNoMatch, client)
	case 1:
		return &r.Machines[best[0]], nil
	default:
		names := make([]string, len(best))
		for k, i := range best {
			names[k] = r.Machines[i].Name
		}
		return nil, fmt.Errorf("%w %s by %s: %s", ErrAmbiguous, client, specName(bestSpec), strings.Join(names, ", "))
	}
}

// matchMachine says how specifically m matches the client (specNone: not at
// all) and, when m agrees on one selector but contradicts another, why it was
// left out.
func matchMachine(m *Machine, mac net.HardwareAddr, u uuid.UUID, haveU bool, serial string) (int, string) {
	s := m.Select
	spec := specNone
	var agreed []string
	var conflict string

	if haveU && s.UUID != "" {
		mu, err := uuid.Parse(strings.TrimSpace(s.UUID))
		if err != nil || placeholderUUID(mu) || !uuidEqual(mu, u) {
			conflict = "its uuid is " + s.UUID
		} else {
			spec = max(spec, specUUID)
			agreed = append(agreed, "uuid")
		}
	}
	if serial != "" && s.Serial != "" {
		if !strings.EqualFold(strings.TrimSpace(s.Serial), serial) {
			if conflict == "" {
				conflict = "its serial is " + s.Serial
			}
		} else {
			spec = max(spec, specSerial)
			agreed = append(agreed, "serial")
		}
	}
	if len(mac) > 0 && len(s.MAC) > 0 {
		found := false
		for _, raw := range s.MAC {
			if hw, err := NormalizeMAC(raw); err == nil && hw.String() == mac.String() {
				found = true
				break
			}
		}
		if !found {
			if conflict == "" {
				conflict = "its MACs are " + strings.Join(s.MAC, ", ")
			}
		} else {
			spec = max(spec, specMAC)
			agreed = append(agreed, "MAC")
		}
	}
	if conflict != "" {
		if len(agreed) > 0 {
			return specNone, fmt.Sprintf("%s has this %s but %s", m.Name, strings.Join(agreed, " and "), conflict)
		}
		return specNone, ""
	}
	return spec, ""
}

func specName(spec int) string {
	switch spec {
	case specUUID:
		return "uuid"
	case specSerial:
		return "serial"
	default:
		return "MAC"
	}
}

func describeClient(mac net.HardwareAddr, u uuid.UUID, haveU bool, serial string) string {
	var parts []string
	if len(mac) > 0 {
		parts = append(parts, "mac="+mac.String())
	}
	if haveU {
		parts = append(parts, "uuid="+u.String())
	}
	if serial != "" {
		parts = append(parts, "serial="+serial)
	}
	return "[" + strings.Join(parts, " ") + "]"
}
