package console_test

import (
	"log"
	"net/http"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/console"
)

// requireOperator stands for the service's own authentication.
func requireOperator(next http.Handler) http.Handler { return next }

// The console mounted at /wharf/ behind the service's authentication,
// with replay, discard, pause and resume enabled.
func ExampleNew() {
	var p *wharf.Pipeline // the service's pipeline, sources and handlers registered
	c, err := console.New(console.Config{Pipeline: p, AllowActions: true})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/wharf/", http.StripPrefix("/wharf", requireOperator(c)))
}
