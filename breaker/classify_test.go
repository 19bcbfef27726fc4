package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
)

// timeoutError is a net.Error that timed out.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// ownDeadline and ownCancel say, through an Is method, that they are the
// context errors.
type ownDeadline struct{}

func (ownDeadline) Error() string        { return "deadline" }
func (ownDeadline) Is(target error) bool { return target == context.DeadlineExceeded }

type ownCancel struct{}

func (ownCancel) Error() string        { return "cancelled" }
func (ownCancel) Is(target error) bool { return target == context.Canceled }

func TestDefaultClassifier(t *testing.T) {
	t.Parallel()
	errBusiness := errors.New("invoice already paid")
	cases := []struct {
		err  error
		want breaker.Outcome
	}{
		// Downstream failures.
		{context.DeadlineExceeded, breaker.Failure},
		{fmt.Errorf("charge: %w", context.DeadlineExceeded), breaker.Failure},
		{os.ErrDeadlineExceeded, breaker.Failure},
		{timeoutError{}, breaker.Failure},
		{errRefused, breaker.Failure},
		{&net.DNSError{Err: "no such host", Name: "billing.internal"}, breaker.Failure},
		{&url.Error{Op: "Post", URL: "https://billing/charge", Err: io.EOF}, breaker.Failure},
		{fmt.Errorf("write: %w", syscall.ECONNRESET), breaker.Failure},
		{syscall.EPIPE, breaker.Failure},
		{syscall.EHOSTUNREACH, breaker.Failure},
		{io.ErrUnexpectedEOF, breaker.Failure},
		{&breaker.StatusError{Code: 500}, breaker.Failure},
		{&breaker.StatusError{Code: 502}, breaker.Failure},
		{&breaker.StatusError{Code: 503}, breaker.Failure},
		{fmt.Errorf("charge: %w", &breaker.StatusError{Code: 504}), breaker.Failure},
		{&breaker.StatusError{Code: 429}, breaker.Failure},
		{breaker.MarkFailure(errBusiness), breaker.Failure},
		{breaker.MarkFailure(&breaker.StatusError{Code: 404}), breaker.Failure},
		{&breaker.DownstreamError{Breaker: "inner", Err: errRefused}, breaker.Failure},
		{fmt.Errorf("read: %w", syscall.ETIMEDOUT), breaker.Failure},
		{errors.Join(errBusiness, errRefused), breaker.Failure},
		{errors.Join(errBusiness, &breaker.StatusError{Code: 502}), breaker.Failure},
		{ownDeadline{}, breaker.Failure},
		// The event's (or the caller's) fault.
		{&breaker.StatusError{Code: 400}, breaker.Excluded},
		{&breaker.StatusError{Code: 401}, breaker.Excluded},
		{&breaker.StatusError{Code: 404}, breaker.Excluded},
		{&breaker.StatusError{Code: 409}, breaker.Excluded},
		{&breaker.StatusError{Code: 422}, breaker.Excluded},
		{context.Canceled, breaker.Excluded},
		{&url.Error{Op: "Post", URL: "https://billing/charge", Err: context.Canceled}, breaker.Excluded},
		{breaker.MarkBusiness(errBusiness), breaker.Excluded},
		{breaker.MarkBusiness(errRefused), breaker.Excluded},
		{breaker.MarkBusiness(&breaker.StatusError{Code: 503}), breaker.Excluded},
		{fmt.Errorf("outer: %w", breaker.MarkFailure(breaker.MarkBusiness(errRefused))), breaker.Failure},
		{&breaker.OpenError{Breaker: "inner"}, breaker.Excluded},
		{errBusiness, breaker.Excluded},
		{io.EOF, breaker.Excluded},
		{&os.PathError{Op: "open", Path: "/etc/billing.json", Err: syscall.ENOENT}, breaker.Excluded},
		{errors.Join(errBusiness, &breaker.StatusError{Code: 404}), breaker.Excluded},
		{ownCancel{}, breaker.Excluded},
		// Success.
		{nil, breaker.Success},
	}
	for _, c := range cases {
		require.Equal(t, c.want, breaker.DefaultClassifier(c.err), "%T %v", c.err, c.err)
		if c.err == nil {
			continue
		}
		// Wrapping a classified error with %w never changes its outcome.
		require.Equal(t, c.want, breaker.DefaultClassifier(fmt.Errorf("wrapped: %w", c.err)), "wrapped %T %v", c.err, c.err)
	}
	require.Nil(t, breaker.MarkBusiness(nil))
	require.Nil(t, breaker.MarkFailure(nil))
}

func TestCustomClassifier(t *testing.T) {
	t.Parallel()
	errThrottled := errors.New("throttled")
	r := newRegistry(t, breaker.Settings{
		Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2,
		Classify: func(err error) breaker.Outcome {
			var se *breaker.StatusError
			switch {
			case errors.Is(err, errThrottled):
				return breaker.Failure
			case errors.As(err, &se) && se.Code == 404:
				return breaker.Success // a missing resource is a healthy answer here
			}
			return breaker.DefaultClassifier(err)
		},
	}, nil)
	notFound := &breaker.StatusError{Code: 404}
	err := r.Execute(ctx, "search", func(context.Context) error { return notFound })
	require.Same(t, notFound, err, "an error classified a success comes back as it is")
	st := requireState(t, r, "search", breaker.StateClosed)
	require.Equal(t, uint32(1), st.Counts.Successes)
	for range 2 {
		require.ErrorIs(t, r.Execute(ctx, "search", func(context.Context) error { return errThrottled }), breaker.ErrDownstream)
	}
	requireState(t, r, "search", breaker.StateOpen)
}

func TestOutcomeAndStateNames(t *testing.T) {
	t.Parallel()
	require.Equal(t, "success", breaker.Success.String())
	require.Equal(t, "failure", breaker.Failure.String())
	require.Equal(t, "excluded", breaker.Excluded.String())
	require.Equal(t, "closed", breaker.StateClosed.String())
	require.Equal(t, "half-open", breaker.StateHalfOpen.String())
	require.Equal(t, "open", breaker.StateOpen.String())
	require.Equal(t, "consecutive-failures", breaker.TripOnConsecutiveFailures.String())
	require.Equal(t, "breaker: downstream answered 503 Service Unavailable", (&breaker.StatusError{Code: 503}).Error())
}

// The errors of a real http.Client: a request it refuses to send or whose
// redirects it refuses to follow is the request's fault, whatever
// *url.Error it comes in; a downstream that cannot be reached, or drops
// the connection, is a failure.
func TestDefaultClassifierOverRealHTTP(t *testing.T) {
	t.Parallel()
	loop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(loop.Close)
	badLocation := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "http://[::1")
		w.WriteHeader(http.StatusFound)
	}))
	t.Cleanup(badLocation.Close)
	hangUp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(hangUp.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	get := func(target string) error {
		req, err := http.NewRequest(http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	badHeader := func() error {
		req, err := http.NewRequest(http.MethodGet, hangUp.URL, nil)
		require.NoError(t, err)
		req.Header.Set("X-Tenant", "a\nb")
		_, err = http.DefaultClient.Do(req)
		return err
	}
	badMethod := func() error {
		req, err := http.NewRequest(http.MethodGet, hangUp.URL, nil)
		require.NoError(t, err)
		req.Method = "GET /"
		_, err = http.DefaultClient.Do(req)
		return err
	}
	cases := []struct {
		name string
		err  error
		want breaker.Outcome
	}{
		{"a URL that does not parse", get("http://[::1"), breaker.Excluded},
		{"a scheme the client does not speak", get("ftp://billing.test/charge"), breaker.Excluded},
		{"no scheme", get("billing.test/charge"), breaker.Excluded},
		{"no host", get("http:///charge"), breaker.Excluded},
		{"an invalid header", badHeader(), breaker.Excluded},
		{"an invalid method", badMethod(), breaker.Excluded},
		{"a redirect loop", get(loop.URL + "/charge"), breaker.Excluded},
		{"a Location that does not parse", get(badLocation.URL), breaker.Excluded},
		{"a refused connection", get(closed.URL), breaker.Failure},
		{"a connection closed before the answer", get(hangUp.URL), breaker.Failure},
	}
	for _, c := range cases {
		require.Error(t, c.err, c.name)
		var ue *url.Error
		require.ErrorAs(t, c.err, &ue, c.name)
		require.Equal(t, c.want, breaker.DefaultClassifier(c.err), "%s: %v", c.name, c.err)
	}
}
