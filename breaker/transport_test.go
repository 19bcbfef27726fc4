package breaker_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
)

// roundTripFunc is a fake base transport.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// trackedBody is a body that records whether it was closed.
type trackedBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *trackedBody) Close() error { b.closed.Store(true); return nil }

func newBody(s string) *trackedBody { return &trackedBody{Reader: strings.NewReader(s)} }

// answer returns a response with status code and a tracked body.
func answer(req *http.Request, code int) (*http.Response, *trackedBody) {
	body := newBody(http.StatusText(code))
	return &http.Response{StatusCode: code, Status: http.StatusText(code), Body: body, Request: req, Header: http.Header{}}, body
}

// newTransport returns a Transport for breaker "billing" that trips after
// three consecutive counted failures.
func newTransport(t *testing.T, base http.RoundTripper) (*breaker.Registry, *http.Client) {
	t.Helper()
	r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 3}, nil)
	tr, err := r.Transport("billing", base)
	require.NoError(t, err)
	return r, &http.Client{Transport: tr}
}

func TestTransportCounts5xxAnd429ButReturnsTheAnswer(t *testing.T) {
	t.Parallel()
	codes := []int{503, 429, 500}
	var calls atomic.Int64
	var bodies []*trackedBody
	r, client := newTransport(t, roundTripFunc(func(req *http.Request) (*http.Response, error) {
		i := calls.Add(1) - 1
		resp, body := answer(req, codes[i])
		bodies = append(bodies, body)
		return resp, nil
	}))

	for i, code := range codes {
		resp, err := client.Get("http://billing.test/charge")
		require.NoError(t, err, "the downstream answered: the caller gets the answer")
		require.Equal(t, code, resp.StatusCode)
		require.False(t, bodies[i].closed.Load(), "a returned body belongs to the caller")
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusText(code), string(b))
		require.NoError(t, resp.Body.Close())
	}
	st := requireState(t, r, "billing", breaker.StateOpen)
	require.Equal(t, uint32(0), st.Counts.Requests, "counts start over when it opens")

	// Open: the request is not sent, its body is closed, the error says
	// until when, through the *url.Error that http.Client wraps it in.
	reqBody := newBody(`{"amount":100}`)
	req, err := http.NewRequest(http.MethodPost, "http://billing.test/charge", reqBody)
	require.NoError(t, err)
	resp, err := client.Do(req)
	require.Nil(t, resp)
	open := requireOpenError(t, err, "billing")
	require.Equal(t, st.Until, open.Until)
	require.Equal(t, int64(3), calls.Load(), "an open breaker sends nothing")
	require.True(t, reqBody.closed.Load(), "a RoundTripper closes the request body it does not send")
}

func TestTransportCountsTransportErrors(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	r, client := newTransport(t, roundTripFunc(func(req *http.Request) (*http.Response, error) {
		calls.Add(1)
		return nil, errRefused
	}))
	for range 3 {
		resp, err := client.Get("http://billing.test/charge")
		require.Nil(t, resp)
		require.ErrorIs(t, err, breaker.ErrDownstream)
		require.ErrorIs(t, err, syscall.ECONNREFUSED)
		var de *breaker.DownstreamError
		require.True(t, errors.As(err, &de))
		require.Equal(t, "billing", de.Breaker)
	}
	requireState(t, r, "billing", breaker.StateOpen)
	_, err := client.Get("http://billing.test/charge")
	requireOpenError(t, err, "billing")
	require.Equal(t, int64(3), calls.Load())
}

func TestTransportDoesNotCount4xx(t *testing.T) {
	t.Parallel()
	codes := []int{400, 401, 403, 404, 409, 422, 200, 201, 204, 302}
	var calls atomic.Int64
	r, client := newTransport(t, roundTripFunc(func(req *http.Request) (*http.Response, error) {
		i := calls.Add(1) - 1
		resp, _ := answer(req, codes[int(i)%len(codes)])
		return resp, nil
	}))
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for i := range 5 * len(codes) {
		resp, err := client.Get("http://billing.test/charge")
		require.NoError(t, err)
		require.Equal(t, codes[i%len(codes)], resp.StatusCode)
		require.NoError(t, resp.Body.Close())
	}
	st := requireState(t, r, "billing", breaker.StateClosed)
	require.Equal(t, uint32(5*6), st.Counts.Excluded, "4xx are excluded")
	require.Equal(t, uint32(5*4), st.Counts.Successes, "2xx and 3xx are successes")
	require.Zero(t, st.Counts.Failures)
}

func TestTransportClosesTheBodyOfAnAnswerItCannotReturn(t *testing.T) {
	t.Parallel()
	var body *trackedBody
	_, client := newTransport(t, roundTripFunc(func(req *http.Request) (*http.Response, error) {
		var resp *http.Response
		resp, body = answer(req, 502)
		return resp, errRefused // a misbehaving transport: both
	}))
	resp, err := client.Get("http://billing.test/charge")
	require.Nil(t, resp)
	require.ErrorIs(t, err, breaker.ErrDownstream)
	require.True(t, body.closed.Load(), "nobody else could close it")
}

func TestTransportOverRealHTTP(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)

	r, client := newTransport(t, srv.Client().Transport)
	for range 3 {
		resp, err := client.Get(srv.URL)
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.NoError(t, resp.Body.Close())
	}
	requireState(t, r, "billing", breaker.StateOpen)
	_, err := client.Get(srv.URL)
	requireOpenError(t, err, "billing")
	require.Equal(t, int64(3), hits.Load())

	// A refused connection, through a second breaker: a listener closed
	// before anyone dials it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	tr, err := r.Transport("gone", nil)
	require.NoError(t, err)
	_, err = (&http.Client{Transport: tr}).Get("http://" + addr)
	require.ErrorIs(t, err, breaker.ErrDownstream)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	st := requireState(t, r, "gone", breaker.StateClosed)
	require.Equal(t, uint32(1), st.Counts.Failures)
}
