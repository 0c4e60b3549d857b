package bmc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// powerVerbs are PowerOn, PowerOff and PowerCycle for both protocols,
// built on a driver's own state and powerTo, under its lock (one request
// in flight per BMC), with its error wrapping.
type powerVerbs struct {
	cfg     *Config
	mu      *sync.Mutex
	state   func(context.Context) (State, error)
	powerTo func(ctx context.Context, want State, a powerAction, timeout time.Duration) error
	fail    func(op string, err error) error
}

func (p powerVerbs) PowerOn(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.powerTo(ctx, StateOn, actionOn, p.cfg.PowerTimeout); err != nil {
		return p.fail("power on", err)
	}
	return nil
}

func (p powerVerbs) PowerOff(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.powerTo(ctx, StateOff, actionHardOff, p.cfg.PowerTimeout); err != nil {
		return p.fail("power off", err)
	}
	return nil
}

func (p powerVerbs) PowerCycle(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := cycle(ctx, p.cfg, p.state, p.powerTo); err != nil {
		return p.fail("power cycle", err)
	}
	return nil
}

// awaitPower polls the state until it is want (both protocols' powerTo,
// after the action was sent, or not needed).
func awaitPower(ctx context.Context, cfg *Config, state func(context.Context) (State, error), want State, action powerAction, timeout time.Duration, sent bool) error {
	_, err := poll(ctx, cfg, timeout, state, func(s State) bool { return s == want })
	if errors.Is(err, ErrTimeout) && sent {
		return fmt.Errorf("%w: sent %s, still not %s after %s", ErrTimeout, action, want, timeout)
	}
	return err
}

// cycle is PowerCycle for both protocols: soft off (bounded), hard off if
// needed, on.
func cycle(ctx context.Context, cfg *Config, state func(context.Context) (State, error),
	powerTo func(ctx context.Context, want State, a powerAction, timeout time.Duration) error) error {
	s, err := state(ctx)
	if err != nil {
		return err
	}
	if s == StateOn {
		err := powerTo(ctx, StateOff, actionSoftOff, cfg.SoftTimeout)
		switch {
		case err == nil:
			cfg.Log.Info("bmc: machine shut down gracefully", "address", cfg.Address)
		case errors.Is(err, ErrTimeout) || errors.Is(err, ErrUnsupported):
			cfg.Log.Info("bmc: graceful shutdown did not complete; forcing power off", "address", cfg.Address, "reason", err)
			if err := powerTo(ctx, StateOff, actionHardOff, cfg.PowerTimeout); err != nil {
				return err
			}
		default:
			return err
		}
	}
	return powerTo(ctx, StateOn, actionOn, cfg.PowerTimeout)
}
