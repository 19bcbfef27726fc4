package breaker

import (
	"context"
	"fmt"
	"net/http"
)

// Transport is an http.RoundTripper that sends each request through a
// Breaker, so an http.Client to a downstream stops calling it while it is
// down:
//
//	t, err := reg.Transport("billing-api", nil)
//	client := &http.Client{Transport: t, Timeout: 10 * time.Second}
//
// With DefaultClassifier, transport errors (connection refused or reset,
// timeouts, DNS failures) and 5xx and 429 answers count as failures; other
// 4xx answers are excluded; the rest count as successes. The Breaker's
// Classifier sees a non-2xx/3xx answer as a *StatusError.
//
// Whatever the breaker counted, an answer the downstream gave is returned
// to the caller as it is, body unread, for the caller to read and close;
// only a transport error comes back as an error (a *DownstreamError when
// counted). An open breaker returns an *OpenError without sending the
// request, and closes the request's body, as a RoundTripper must.
type Transport struct {
	// Breaker guards the downstream. Required.
	Breaker *Breaker
	// Base sends the requests. Defaults to http.DefaultTransport.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	var (
		resp *http.Response
		sent bool
	)
	err := t.Breaker.Execute(req.Context(), func(context.Context) error {
		sent = true
		r, err := base.RoundTrip(req)
		if err != nil {
			if r != nil && r.Body != nil {
				r.Body.Close() // a RoundTripper should not return both; nobody else would close it
			}
			return err
		}
		if r == nil {
			return fmt.Errorf("breaker: %q: transport returned neither a response nor an error", t.Breaker.name)
		}
		resp = r
		if r.StatusCode >= 400 {
			return &StatusError{Code: r.StatusCode}
		}
		return nil
	})
	if resp != nil {
		return resp, nil
	}
	if !sent && req.Body != nil {
		req.Body.Close()
	}
	return nil, err
}
