package bmc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// openAuto probes Redfish (https, then http) and then IPMI, and opens the
// first that answers. Credentials are checked only on the protocol picked.
func openAuto(ctx context.Context, cfg Config) (Driver, error) {
	hc := cfg.httpClient()
	ep, rerr := findRedfish(ctx, &cfg, hc)
	if rerr == nil {
		cfg.Log.Info("bmc: protocol picked by probing", "address", cfg.Address, "protocol", ProtocolRedfish, "endpoint", ep)
		d, err := openRedfish(ctx, cfg, ep)
		if err != nil {
			return nil, err
		}
		rd := d.(*redfishDriver)
		rd.info.Probed = true
		return rd, nil
	}
	if isCertError(rerr) {
		return nil, cfg.errorf(ProtocolRedfish, "probe", rerr)
	}
	ierr := probeIPMI(ctx, &cfg)
	if ierr == nil {
		cfg.Log.Info("bmc: protocol picked by probing", "address", cfg.Address, "protocol", ProtocolIPMI)
		return openIPMI(ctx, cfg, true)
	}
	return nil, cfg.errorf(ProtocolAuto, "probe", fmt.Errorf("%w: neither Redfish (%v) nor IPMI (%v) answered; check the address, or set the protocol", ErrUnreachable, rerr, ierr))
}

// probeIPMI sends Get Channel Authentication Capabilities (no session
// needed) and waits for a valid answer, three times at most.
func probeIPMI(ctx context.Context, cfg *Config) error {
	host, port, err := ipmiHostPort(cfg.Address)
	if err != nil {
		return err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	defer conn.Close()
	return ProbeIPMI(ctx, conn)
}

// ProbeIPMI asks an IPMI BMC over conn (UDP, connected; the caller dials
// it, from whatever network namespace) for its channel authentication
// capabilities, which needs no session, up to three times a second apart.
// nil: an RMCP+ (IPMI v2.0) BMC answers there.
func ProbeIPMI(ctx context.Context, conn net.Conn) error {
	buf := make([]byte, 512)
	var last error = errors.New("no answer")
	for try := 0; try < 3 && ctx.Err() == nil; try++ {
		if _, err := conn.Write(authCapsRequest); err != nil {
			last = err
			continue
		}
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			last = err
			continue
		}
		rmcpPlus, err := parseAuthCapsResponse(buf[:n])
		if err != nil {
			last = err
			continue
		}
		if !rmcpPlus {
			return errors.New("the BMC speaks only IPMI v1.5; rackboot needs IPMI v2.0 (RMCP+, lanplus)")
		}
		return nil
	}
	return last
}
