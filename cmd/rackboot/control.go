package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dotfile/rackboot/inventory"
)

// The control socket: commands on the same computer (status, machine
// reinstall, machine forget, up's progress) talk to a running `rackboot
// serve` through <stateDir>/serve.sock, a Unix socket only the state
// dir's owner can open (mode 0600). So state changes go through the one
// process that writes the state files, and nothing that changes state is
// reachable from the network.

// ControlSocket is the control socket's name in the state dir.
const ControlSocket = "serve.sock"

// controlBase is the URL base of requests over the control socket.
const controlBase = "http://rackboot"

// controlActions are what the control socket can change.
type controlActions struct {
	reinstall func(name string) error
	forget    func(key string) error
	// reload reads the rack file again (machine adopt); nil: not offered.
	reload func() (string, error)
}

// controlHandler serves the status routes and the actions.
func controlHandler(status http.Handler, act controlActions) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /", status)
	do := func(fn func(string) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			err := fn(r.PathValue("key"))
			w.Header().Set("Content-Type", "application/json")
			if err != nil {
				code := http.StatusConflict
				if errors.Is(err, inventory.ErrUnknownMachine) {
					code = http.StatusNotFound
				}
				w.WriteHeader(code)
				json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
				return
			}
			json.NewEncoder(w).Encode(map[string]string{"ok": "true"})
		}
	}
	mux.Handle("POST /machines/{key}/reinstall", do(act.reinstall))
	mux.Handle("POST /machines/{key}/forget", do(act.forget))
	if act.reload != nil {
		// The answer says what changed: {"ok": "true", "message": "rack reloaded: ..."}.
		mux.Handle("POST /rack/reload", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			msg, err := act.reload()
			if err != nil {
				do(func(string) error { return err })(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]string{"ok": "true", "message": msg})
		}))
	}
	return mux
}

// listenControl opens <stateDir>/serve.sock (0600). A socket file left by a
// process that died is replaced; one a live server answers on is an error.
func listenControl(stateDir string) (net.Listener, error) {
	path := filepath.Join(stateDir, ControlSocket)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another rackboot serve is running for this state dir (%s answers): stop it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// serveControl answers on ln until ctx ends.
func serveControl(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// controlClient is an HTTP client that reaches serve through the socket.
func controlClient(stateDir string, timeout time.Duration) *http.Client {
	path := filepath.Join(stateDir, ControlSocket)
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

// errNoServer: no serve is running for the state dir.
var errNoServer = errors.New("no rackboot serve is running for this state dir")

// controlPost asks the running serve to act; errNoServer when none runs.
func controlPost(ctx context.Context, stateDir, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, controlBase+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := controlClient(stateDir, 10*time.Second).Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return "", errNoServer
		}
		return "", fmt.Errorf("ask the running rackboot serve: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var answer struct{ Error, Message string }
	parsed := json.Unmarshal(body, &answer) == nil
	if resp.StatusCode != http.StatusOK {
		if parsed && answer.Error != "" {
			if resp.StatusCode == http.StatusNotFound {
				return "", fmt.Errorf("%s (%w)", answer.Error, inventory.ErrUnknownMachine)
			}
			return "", errors.New(answer.Error)
		}
		return "", fmt.Errorf("the running rackboot serve answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return answer.Message, nil
}

// reportServeReload asks a running serve to read the rack file again (the
// control socket's /rack/reload) and says what happened, with what the
// serve answered changed ("7 machines, added urban"), then the caller's:
// taken when the serve took the new rack, idle when none runs. A serve that
// refused the new rack is named with its reason; the rack file is written
// either way, so this never fails the command.
func reportServeReload(ctx context.Context, stateDir string, out io.Writer, taken, idle string) {
	msg, err := controlPost(ctx, stateDir, "/rack/reload")
	switch {
	case err == nil:
		// "rack reloaded: 7 machines, added urban" reads as
		// "reloaded the rack (7 machines, added urban)".
		if what := strings.TrimPrefix(msg, "rack reloaded: "); what != "" && what != msg {
			msg = " (" + what + ")"
		} else {
			msg = ""
		}
		fmt.Fprintf(out, "the running rackboot serve reloaded the rack%s%s\n", msg, suffix(taken))
	case errors.Is(err, errNoServer):
		fmt.Fprintf(out, "no rackboot serve is running%s\n", suffix(idle))
	default:
		fmt.Fprintf(out, "the running rackboot serve did not take the new rack (%v): restart it\n", err)
	}
}

// suffix is ": s", or nothing for an empty s.
func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}
