package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/wharfhq/wharf/breaker"
)

func Example() {
	reg, err := breaker.New(breaker.Config{
		Default: breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2},
		OnStateChange: func(c breaker.StateChange) {
			fmt.Printf("state change: %s %s -> %s\n", c.Breaker, c.From, c.To)
		},
	})
	if err != nil {
		panic(err)
	}
	defer reg.Close()

	charge := func(ctx context.Context) error {
		return &breaker.StatusError{Code: http.StatusServiceUnavailable} // the billing API is down
	}
	for range 3 {
		err := reg.Execute(context.Background(), "billing-api", charge)
		var open *breaker.OpenError
		switch {
		case errors.As(err, &open):
			fmt.Println("not called; defer the event until open.Until, no attempt spent:", open.State)
		case errors.Is(err, breaker.ErrDownstream):
			fmt.Println("called; the downstream failed, no attempt spent:", err)
		case err != nil:
			fmt.Println("called; the event's fault, spend an attempt:", err)
		}
	}
	fmt.Println(len(reg.Open()), "open breaker")
	// Output:
	// called; the downstream failed, no attempt spent: breaker: "billing-api": downstream failure: breaker: downstream answered 503 Service Unavailable
	// state change: billing-api closed -> open
	// called; the downstream failed, no attempt spent: breaker: "billing-api": downstream failure: breaker: downstream answered 503 Service Unavailable
	// not called; defer the event until open.Until, no attempt spent: open
	// 1 open breaker
}

func ExampleRegistry_Transport() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/invoices/missing" {
			http.NotFound(w, r)
			return
		}
		http.Error(w, "overloaded", http.StatusTooManyRequests)
	}))
	defer srv.Close()

	reg, err := breaker.New(breaker.Config{
		Default: breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2},
	})
	if err != nil {
		panic(err)
	}
	t, err := reg.Transport("billing-api", nil)
	if err != nil {
		panic(err)
	}
	client := &http.Client{Transport: t}

	for _, path := range []string{"/invoices/missing", "/invoices/missing", "/charge", "/charge", "/charge"} {
		resp, err := client.Get(srv.URL + path)
		if err != nil {
			fmt.Println(path, "->", errors.Is(err, breaker.ErrOpen), "(open)")
			continue
		}
		resp.Body.Close()
		fmt.Println(path, "->", resp.StatusCode)
	}
	// Output:
	// /invoices/missing -> 404
	// /invoices/missing -> 404
	// /charge -> 429
	// /charge -> 429
	// /charge -> true (open)
}
