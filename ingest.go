package wharf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
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
//	says only "invalid signature"); 400 an id or type missing or invalid;
//	405 not POST; 413 too large; 503 with Retry-After when the event could
//	not be stored within Config.AckDeadline.
//
// Handshakes (Slack's url_verification) are answered and store nothing.
// The source must be registered with Source before requests arrive.
func (p *Pipeline) Handler(source string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.ingest(w, r, source)
	})
}

func (p *Pipeline) ingest(w http.ResponseWriter, r *http.Request, name string) {
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
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read body", http.StatusBadRequest)
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
