package wharf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wharfhq/wharf/queue"
)

// droppedHeaders are never stored with an event: credentials of the hop
// between the provider and this service, not part of the webhook.
var droppedHeaders = []string{"Authorization", "Cookie", "Proxy-Authorization"}

// Handler returns the endpoint of one source, for any router:
//
//	mux.Handle("POST /webhooks/stripe", p.Handler("stripe"))
//
// It reads the raw body (at most Config.MaxBodyBytes), verifies its
// signature, extracts the event's id and type, stores the event durably,
// and only then answers:
//
//	202 stored; 200 a duplicate (already queued, processed or dead-lettered:
//	the sender must stop retrying); 401 a bad or missing signature (the body
//	says only "invalid signature"); 400 an id or type missing or invalid, or
//	a body cut short; 405 not POST; 408 a body not received within
//	Config.BodyReadTimeout; 413 too large; 500 a source whose verifier or
//	secret lookup reports ErrInvalidSource; 503 with Retry-After when the
//	store failed, or the event could not be stored within Config.AckDeadline.
//
// Handshakes (Slack's url_verification) are answered and store nothing.
// The source must be registered with Source before requests arrive: until
// it is, they get 404.
func (p *Pipeline) Handler(source string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.cfg.Observer != nil {
			p.observeIngest(w, r, source)
			return
		}
		p.ingest(w, r, source, nil)
	})
}

// ingest serves one request. When identified is not nil, it receives the
// event's identity once extracted, for the Observer.
func (p *Pipeline) ingest(w http.ResponseWriter, r *http.Request, name string, identified *Identity) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p.mu.RLock()
	src := p.sources[name]
	p.mu.RUnlock()
	if src == nil {
		p.cfg.Logger.Error("wharf: request for an unregistered source", "source", name)
		http.Error(w, "unknown source", http.StatusNotFound)
		return
	}
	body, ok := p.readBody(w, r)
	if !ok {
		return
	}
	// The deadline covers the verification too: a secret lookup that hangs
	// must not hold the provider past its own timeout.
	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.AckDeadline)
	defer cancel()

	if err := src.verifier.Verify(ctx, r.Header, body); err != nil {
		switch {
		case errors.Is(err, ErrInvalidSignature):
			p.cfg.Logger.Warn("wharf: refused a request", "source", name, "error", err)
			http.Error(w, "invalid signature", http.StatusUnauthorized)
		case errors.Is(err, ErrInvalidSource):
			p.cfg.Logger.Error("wharf: source is misconfigured", "source", name, "error", err)
			http.Error(w, "source misconfigured", http.StatusInternalServerError)
		default:
			p.unavailable(w, name, "verify", err)
		}
		return
	}
	if hs, ok := src.verifier.(Handshaker); ok {
		if status, contentType, response, handled := hs.Handshake(r.Header, body); handled {
			w.Header().Set("Content-Type", contentType)
			w.WriteHeader(status)
			_, _ = w.Write(response)
			return
		}
	}
	fallback, _ := src.verifier.(Identifier)
	id, err := IdentifyWith(src.fields, fallback, r.Header, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if identified != nil {
		*identified = id
	}

	ev := queue.NewEvent{Source: name, ID: id.ID, Type: id.Type, OrderingKey: id.OrderingKey, Body: body, Headers: keptHeaders(r.Header)}
	if h := p.handlerFor(name, id.Type); h != nil {
		ev.Handler, ev.MaxAttempts = h.name, h.maxAttempts
	}
	res, err := p.queue.Enqueue(ctx, ev)
	switch {
	case errors.Is(err, queue.ErrInvalidEvent):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case err != nil:
		p.unavailable(w, name, "store", err)
	case res.Duplicate:
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "duplicate\n")
	default:
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "accepted\n")
	}
}

// readBody reads the raw body, at most Config.MaxBodyBytes of it, within
// Config.BodyReadTimeout. When it cannot, it answers (413 too large, 408
// too slow, 400 cut short) and returns false.
//
// A body not received in time gets 408 Request Timeout rather than 503:
// the sender (or its network) is slow, not the store, so the answer must
// not look like the outage that 503 reports and operators alert on; the
// provider retries a 408 like any other failure. The deadline is set
// through http.ResponseController; a ResponseWriter that cannot take one
// (a middleware's wrapper without Unwrap) leaves only the server's
// ReadTimeout to bound the read.
func (p *Pipeline) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(p.cfg.BodyReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.cfg.MaxBodyBytes))
	if err == nil {
		// Lift the deadline once the body is in: when it passes,
		// net/http's background read of the finished request cancels the
		// request's context, and with it the store of an event that is
		// being committed.
		_ = rc.SetReadDeadline(time.Time{})
		return body, true
	}
	// The rest of the body stays unread: the connection closes after the
	// answer. Otherwise net/http would read up to 256 KiB of it first,
	// from a sender that may never send it, before answering at all.
	w.Header().Set("Connection", "close")
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
	case errors.Is(err, os.ErrDeadlineExceeded):
		p.cfg.Logger.Warn("wharf: a request body was not received in time; answered 408", "timeout", p.cfg.BodyReadTimeout)
		http.Error(w, "body not received in time", http.StatusRequestTimeout)
	default:
		http.Error(w, "cannot read body", http.StatusBadRequest)
	}
	return nil, false
}

// unavailable answers 503: the provider retries later, and nothing was
// acknowledged.
func (p *Pipeline) unavailable(w http.ResponseWriter, source, step string, err error) {
	p.cfg.Logger.Error(fmt.Sprintf("wharf: cannot %s an event; answered 503", step), "source", source, "error", err)
	w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
}

// retryAfterSeconds is the Retry-After of a 503. Providers mostly follow
// their own schedules; those that honour it come back soon.
const retryAfterSeconds = 5

// keptHeaders copies the request headers worth storing with the event: all
// but the hop's credentials, and but values the queue cannot store (not
// UTF-8, holding NUL, over 16 KiB), which must not cost a valid event its
// delivery.
func keptHeaders(h http.Header) http.Header {
	kept := make(http.Header, len(h))
	for name, values := range h {
		if slices.Contains(droppedHeaders, name) || !storable(name, 1<<10) {
			continue
		}
		for _, v := range values {
			if storable(v, 16<<10) {
				kept[name] = append(kept[name], v)
			}
		}
	}
	return kept
}

func storable(s string, maxLen int) bool {
	return len(s) <= maxLen && utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}
