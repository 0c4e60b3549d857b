package bmc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/schemas"
)

type redfishDriver struct {
	cfg    Config
	info   Info
	mu     sync.Mutex // one operation, hence one request, at a time
	client *gofish.APIClient
	http   *http.Client
	powerVerbs
}

// redfishEndpoints lists the base URLs to try for an address: a URL as is,
// otherwise https then http.
func redfishEndpoints(addr string) []string {
	if strings.Contains(addr, "://") {
		u := strings.TrimRight(addr, "/")
		u = strings.TrimSuffix(u, "/redfish/v1")
		return []string{u}
	}
	if strings.Count(addr, ":") > 1 && !strings.HasPrefix(addr, "[") {
		addr = "[" + addr + "]" // a bare IPv6 address
	}
	return []string{"https://" + addr, "http://" + addr}
}

func (cfg *Config) httpClient() *http.Client {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.VerifyTLS {
		tlsConf.RootCAs = cfg.RootCAs
	} else {
		tlsConf.InsecureSkipVerify = true //nolint:gosec // documented default: BMCs use self-signed certificates
	}
	tr := &http.Transport{
		Proxy:                 nil, // BMCs sit on the rack network
		DialContext:           (&net.Dialer{Timeout: cfg.RequestTimeout}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   cfg.RequestTimeout,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		MaxConnsPerHost:       1,
		IdleConnTimeout:       30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: cfg.RequestTimeout}
}

// probeRedfish GETs the service root (unauthenticated, as the standard
// allows) and checks it is one.
func probeRedfish(ctx context.Context, hc *http.Client, endpoint string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/redfish/v1/", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return nil // a service root behind authentication: still Redfish
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /redfish/v1/: HTTP %d", resp.StatusCode)
	}
	var root struct {
		RedfishVersion string
		ODataID        string `json:"@odata.id"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&root); err != nil {
		return fmt.Errorf("GET /redfish/v1/: not a Redfish service root: %w", err)
	}
	if root.RedfishVersion == "" && root.ODataID == "" {
		return errors.New("GET /redfish/v1/: not a Redfish service root")
	}
	return nil
}

// isCertError tells a certificate that did not verify (no fallback to
// plain http then) from a peer that does not speak TLS.
func isCertError(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

// findRedfish returns the first endpoint whose service root answers.
func findRedfish(ctx context.Context, cfg *Config, hc *http.Client) (string, error) {
	var errs []error
	for _, ep := range redfishEndpoints(cfg.Address) {
		pctx, cancel := context.WithTimeout(ctx, min(cfg.RequestTimeout, 5*time.Second))
		err := probeRedfish(pctx, hc, ep)
		cancel()
		if err == nil {
			return ep, nil
		}
		if isCertError(err) {
			return "", fmt.Errorf("%s: the BMC's TLS certificate does not verify: %w (give its CA, or turn certificate verification off)", ep, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
		if ctx.Err() != nil {
			break
		}
	}
	return "", fmt.Errorf("%w: no Redfish service: %w", ErrUnreachable, errors.Join(errs...))
}

// openRedfish connects, checks the credentials and finds the system.
// endpoint is "" to find it.
func openRedfish(ctx context.Context, cfg Config, endpoint string) (Driver, error) {
	d := &redfishDriver{cfg: cfg, http: cfg.httpClient()}
	d.powerVerbs = powerVerbs{cfg: &d.cfg, mu: &d.mu, state: d.state, powerTo: d.powerTo, fail: d.fail}
	d.info = Info{Address: cfg.Address, Protocol: ProtocolRedfish, TLSVerified: cfg.VerifyTLS}
	if endpoint == "" {
		ep, err := findRedfish(ctx, &d.cfg, d.http)
		if err != nil {
			return nil, cfg.errorf(ProtocolRedfish, "connect", err)
		}
		endpoint = ep
	}
	d.info.Endpoint = endpoint
	if strings.HasPrefix(endpoint, "https:") && !cfg.VerifyTLS {
		cfg.Log.Warn("bmc: TLS certificate not verified (BMCs use self-signed certificates)", "address", cfg.Address, "endpoint", endpoint)
	}
	if strings.HasPrefix(endpoint, "http:") {
		d.info.TLSVerified = false
		cfg.Log.Warn("bmc: Redfish over plain http: the password crosses the network in the clear", "address", cfg.Address, "endpoint", endpoint)
	}

	err := retry(ctx, &d.cfg, transientRedfish, func(ctx context.Context) error {
		c, err := gofish.ConnectContext(ctx, gofish.ClientConfig{
			Endpoint:              endpoint,
			Username:              cfg.User,
			Password:              cfg.Password,
			BasicAuth:             true, // no session to leak on BMCs with few session slots
			HTTPClient:            d.http,
			NoModifyTransport:     true,
			MaxConcurrentRequests: 1,
		})
		if err != nil {
			return err
		}
		d.client = c
		return nil
	})
	if err != nil {
		return nil, cfg.errorf(ProtocolRedfish, "connect to "+endpoint, redfishErr(err, &cfg))
	}
	uri, err := d.findSystem(ctx)
	if err != nil {
		d.http.CloseIdleConnections()
		return nil, cfg.errorf(ProtocolRedfish, "find the computer system", redfishErr(err, &cfg))
	}
	d.info.System = uri
	cfg.Log.Debug("bmc: redfish system found", "address", cfg.Address, "system", uri)
	return d, nil
}

func (d *redfishDriver) findSystem(ctx context.Context) (string, error) {
	var systems []*schemas.ComputerSystem
	err := retry(ctx, &d.cfg, transientRedfish, func(ctx context.Context) error {
		var err error
		systems, err = d.client.WithContext(ctx).Service.Systems()
		return err
	})
	if err != nil {
		return "", err
	}
	_, macErr := net.ParseMAC(d.cfg.SystemID)
	refs := make([]systemRef, len(systems))
	for i, s := range systems {
		refs[i] = systemRef{ODataID: s.ODataID, ID: s.ID, UUID: s.UUID}
		if d.cfg.SystemID != "" && macErr == nil {
			nics, err := s.EthernetInterfaces()
			if err != nil {
				d.cfg.Log.Debug("bmc: list network interfaces", "address", d.cfg.Address, "system", s.ID, "err", err)
			}
			for _, n := range nics {
				refs[i].MACs = append(refs[i].MACs, n.MACAddress, n.PermanentMACAddress)
			}
		}
	}
	i, err := matchSystem(refs, d.cfg.SystemID)
	if err != nil {
		return "", err
	}
	return refs[i].ODataID, nil
}

func (d *redfishDriver) Info() Info { return d.info }

func (d *redfishDriver) fail(op string, err error) error {
	return d.cfg.errorf(ProtocolRedfish, op, redfishErr(err, &d.cfg))
}

// reqCtx bounds one request.
func (d *redfishDriver) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.cfg.RequestTimeout)
}

// system fetches the system afresh (state, allowed values, ETag).
func (d *redfishDriver) system(ctx context.Context) (*schemas.ComputerSystem, error) {
	var sys *schemas.ComputerSystem
	err := retry(ctx, &d.cfg, transientRedfish, func(ctx context.Context) error {
		rctx, cancel := d.reqCtx(ctx)
		defer cancel()
		var err error
		sys, err = schemas.GetComputerSystem(d.client.WithContext(rctx), d.info.System)
		return err
	})
	return sys, err
}

func (d *redfishDriver) state(ctx context.Context) (State, error) {
	sys, err := d.system(ctx)
	if err != nil {
		return StateUnknown, err
	}
	return redfishPowerState(string(sys.PowerState)), nil
}

func (d *redfishDriver) PowerState(ctx context.Context) (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.state(ctx)
	if err != nil {
		return s, d.fail("read power state", err)
	}
	return s, nil
}

// powerTo does action unless the machine is already in want, then polls
// the state until it is, for up to timeout. A failed or timed-out request
// is retried only after reading the state again, so the action is never
// sent twice to a machine that already took it.
func (d *redfishDriver) powerTo(ctx context.Context, want State, action powerAction, timeout time.Duration) error {
	sent := false
	err := retry(ctx, &d.cfg, transientRedfish, func(ctx context.Context) error {
		sys, err := d.system(ctx)
		if err != nil {
			return err
		}
		if redfishPowerState(string(sys.PowerState)) == want {
			return nil
		}
		allowed, err := sys.GetSupportedResetTypes()
		if err != nil {
			d.cfg.Log.Debug("bmc: reset types", "address", d.cfg.Address, "err", err)
		}
		names := make([]string, len(allowed))
		for i, a := range allowed {
			names[i] = string(a)
		}
		rt, err := chooseResetType(action, names)
		if err != nil {
			return err
		}
		rctx, cancel := d.reqCtx(ctx)
		defer cancel()
		sys.SetClient(d.client.WithContext(rctx))
		d.cfg.Log.Info("bmc: reset", "address", d.cfg.Address, "resetType", rt)
		_, err = sys.Reset(schemas.ResetType(rt))
		var re *schemas.Error
		if errors.As(err, &re) && re.HTTPReturnedStatusCode == http.StatusPreconditionFailed {
			// A BMC whose ETags do not match its own If-Match check
			// (ansible community.general#3268): send without.
			sys.DisableEtagMatch(true)
			_, err = sys.Reset(schemas.ResetType(rt))
		}
		if err == nil {
			sent = true
		}
		return err
	})
	if err != nil {
		return err
	}
	return awaitPower(ctx, &d.cfg, d.state, want, action, timeout, sent)
}

func (d *redfishDriver) SetNetbootOnce(ctx context.Context, mode BootMode) (BootOverride, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if mode != BootModeBIOS && mode != BootModeUEFI {
		return BootOverride{}, d.fail("set network boot", fmt.Errorf("unknown boot mode %q: use bios or uefi", mode))
	}
	sys, err := d.system(ctx)
	if err != nil {
		return BootOverride{}, d.fail("set network boot", err)
	}
	if allowed := sys.Boot.AllowableBootSourceOverrideTargetValues; len(allowed) > 0 {
		ok := false
		for _, a := range allowed {
			ok = ok || a == schemas.PxeBootSource
		}
		if !ok {
			return BootOverride{}, d.fail("set network boot", fmt.Errorf("%w: the system's boot targets are %v, without Pxe", ErrUnsupported, allowed))
		}
	}
	boot := map[string]string{
		"BootSourceOverrideTarget":  "Pxe",
		"BootSourceOverrideEnabled": "Once",
		// Dell 13G needs the mode for a one-time UEFI PXE boot
		// (ansible/ansible#52658); iLO 4 rejects it (below).
		"BootSourceOverrideMode": redfishMode(mode),
	}
	err = d.patchBoot(ctx, sys, boot)
	var re *schemas.Error
	if errors.As(err, &re) && dropModeAndRetry(re.HTTPReturnedStatusCode, re.Error()) {
		d.cfg.Log.Warn("bmc: the BMC refused BootSourceOverrideMode; setting the override without it", "address", d.cfg.Address, "status", re.HTTPReturnedStatusCode)
		delete(boot, "BootSourceOverrideMode")
		if sys, err = d.system(ctx); err == nil {
			err = d.patchBoot(ctx, sys, boot)
		}
	}
	if err != nil {
		return BootOverride{}, d.fail("set network boot", err)
	}
	got, err := d.readBack(ctx, mode)
	if err != nil {
		return got, d.fail("set network boot", err)
	}
	return got, nil
}

// readBack reads the override until it matches, up to three times over
// about two seconds (some BMCs apply a PATCH a moment later).
func (d *redfishDriver) readBack(ctx context.Context, mode BootMode) (BootOverride, error) {
	var got BootOverride
	var err error
	for i := 0; i < 3; i++ {
		if i > 0 {
			if serr := d.cfg.Sleep(ctx, 700*time.Millisecond); serr != nil {
				return got, serr
			}
		}
		sys, serr := d.system(ctx)
		if serr != nil {
			return got, fmt.Errorf("read the override back: %w", serr)
		}
		b := sys.Boot
		got, err = checkOverride(mode, redfishOverride(string(b.BootSourceOverrideTarget), string(b.BootSourceOverrideEnabled), string(b.BootSourceOverrideMode)))
		if len(got.Differences) == 0 {
			return got, nil
		}
	}
	d.cfg.Log.Warn("bmc: the BMC holds a different boot override than asked", "address", d.cfg.Address, "override", got.String())
	return got, err
}

// patchBoot PATCHes {"Boot": boot} with If-Match when the system has an
// ETag (BMCs that require it answer 428 otherwise: DMTF
// Redfish-Tacklebox#22), and once more without it on 412.
func (d *redfishDriver) patchBoot(ctx context.Context, sys *schemas.ComputerSystem, boot map[string]string) error {
	body := map[string]any{"Boot": boot}
	send := func(etag string) error {
		rctx, cancel := d.reqCtx(ctx)
		defer cancel()
		h := map[string]string{}
		if etag != "" {
			h["If-Match"] = etag
		}
		resp, err := d.client.WithContext(rctx).PatchWithHeaders(sys.ODataID, body, h)
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
		}
		return err
	}
	etag := sys.ODataEtag
	err := send(etag)
	var re *schemas.Error
	if etag != "" && errors.As(err, &re) && re.HTTPReturnedStatusCode == http.StatusPreconditionFailed {
		d.cfg.Log.Debug("bmc: If-Match refused; sending the PATCH without it", "address", d.cfg.Address)
		err = send("")
	}
	return err
}

func (d *redfishDriver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.http.CloseIdleConnections()
	return nil
}

// transientRedfish: network trouble, timeouts and 429/5xx answers are worth
// another try; any other answer is not.
func transientRedfish(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || isCertError(err) {
		return false
	}
	if re, ok := asRedfishError(err); ok {
		c := re.HTTPReturnedStatusCode
		return c == 429 || c == 500 || c == 502 || c == 503 || c == 504
	}
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// asRedfishError finds the BMC's error answer in err, also inside
// gofish's error for a collection (one failure per member).
func asRedfishError(err error) (*schemas.Error, bool) {
	var re *schemas.Error
	if errors.As(err, &re) {
		return re, true
	}
	var ce *schemas.CollectionError
	if errors.As(err, &ce) {
		for _, f := range ce.Failures {
			if errors.As(f, &re) {
				return re, true
			}
		}
	}
	return nil, false
}

// redfishErr puts a Redfish failure in the user's words.
func redfishErr(err error, cfg *Config) error {
	if re, ok := asRedfishError(err); ok {
		switch re.HTTPReturnedStatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("%w (HTTP 401 for user %q): check the BMC user and password", ErrAuth, cfg.User)
		case http.StatusForbidden:
			return fmt.Errorf("%w (HTTP 403: user %q may not do this; give it the Administrator or Operator role)", ErrAuth, cfg.User)
		}
		return fmt.Errorf("HTTP %d: %s", re.HTTPReturnedStatusCode, strings.TrimSpace(redact(re.Error(), cfg.Password)))
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return err
}
