package breaker_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
)

// errRefused is what a dial to a downstream that is down returns.
var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

// downstream is a fake downstream that counts its calls and answers with
// the error it is set to.
type downstream struct {
	calls atomic.Int64
	mu    sync.Mutex
	err   error
}

func (d *downstream) set(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
}

func (d *downstream) call(context.Context) error {
	d.calls.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// recorder collects state changes.
type recorder struct {
	mu      sync.Mutex
	changes []breaker.StateChange
}

func (r *recorder) record(c breaker.StateChange) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) all() []breaker.StateChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]breaker.StateChange(nil), r.changes...)
}

// transitions returns the recorded changes as "from>to" strings, with a
// "(shared)" suffix for adopted ones.
func (r *recorder) transitions() []string {
	var out []string
	for _, c := range r.all() {
		s := c.From.String() + ">" + c.To.String()
		if c.Shared {
			s += " (shared)"
		}
		out = append(out, s)
	}
	return out
}

// newRegistry returns a local Registry with def as its default settings.
func newRegistry(t testing.TB, def breaker.Settings, rec *recorder) *breaker.Registry {
	t.Helper()
	cfg := breaker.Config{Default: def}
	if rec != nil {
		cfg.OnStateChange = rec.record
	}
	r, err := breaker.New(cfg)
	require.NoError(t, err)
	t.Cleanup(r.Close)
	return r
}

// requireOpenError asserts that err is an *OpenError of breaker name and
// returns it.
func requireOpenError(t testing.TB, err error, name string) *breaker.OpenError {
	t.Helper()
	require.ErrorIs(t, err, breaker.ErrOpen)
	var open *breaker.OpenError
	require.True(t, errors.As(err, &open), "want *OpenError, got %T: %v", err, err)
	require.Equal(t, name, open.Breaker)
	return open
}

// requireState asserts the state of breaker name.
func requireState(t testing.TB, r *breaker.Registry, name string, want breaker.State) breaker.Status {
	t.Helper()
	st, err := r.State(name)
	require.NoError(t, err)
	require.Equal(t, want, st.State, "state of %q", name)
	return st
}
