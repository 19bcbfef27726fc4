package console

import (
	"crypto/rand"
	_ "embed" // the stylesheet
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// stylesheet is the console's one stylesheet, served as
// static/console.css.
//
//go:embed static/console.css
var stylesheet []byte

// Console is the web console: an http.Handler serving the overview, the
// dead-letter pages and the audit lookup, and, when Config.AllowActions is
// set, replay, discard, pause and resume. It is safe for concurrent use.
type Console struct {
	cfg   Config
	parts parts
	mux   *http.ServeMux
	pages *pages
	csrf  *csrf
	mask  headerMask
	log   *slog.Logger
}

// New returns a Console, or an error wrapping ErrInvalidConfig (a
// *ConfigError) when cfg cannot work. It does no I/O.
func New(cfg Config) (*Console, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	key := cfg.CSRFKey
	if key == nil {
		key = make([]byte, MinCSRFKeyBytes)
		rand.Read(key) // never fails (crypto/rand panics instead)
	}
	protect, err := newCSRF(key, cfg.TokenTTL, cfg.TrustedOrigins)
	if err != nil {
		return nil, err
	}
	pg, err := parsePages()
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	c := &Console{
		cfg:   cfg,
		parts: cfg.parts(),
		pages: pg,
		csrf:  protect,
		mask:  newHeaderMask(cfg.MaskHeaders),
		log:   cfg.Logger,
	}
	c.mux = c.routes()
	return c, nil
}

// routes maps the console's paths, relative to where it is mounted. GETs
// only read; every POST goes through c.action (actions enabled, CSRF).
func (c *Console) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("GET /dlq", c.needDLQ(c.dlqList))
	mux.HandleFunc("GET /dlq/{id}", c.needDLQ(c.dlqEntry))
	mux.HandleFunc("GET /dlq/replay", c.needDLQ(c.confirmBulkReplay))
	mux.HandleFunc("POST /dlq/replay", c.needDLQ(c.action(c.bulkReplay)))
	mux.HandleFunc("POST /dlq/{id}/replay", c.needDLQ(c.action(c.replayOne)))
	mux.HandleFunc("POST /dlq/{id}/discard", c.needDLQ(c.action(c.discardOne)))
	mux.HandleFunc("POST /pauses", c.needQueue(c.action(c.pause)))
	mux.HandleFunc("POST /pauses/resume", c.needQueue(c.action(c.resume)))
	mux.HandleFunc("GET /events", c.events)
	// The one file, rather than a file server: its directory listing,
	// its redirect of /static (which leaves the mount prefix) and its
	// error answers (without Cache-Control) are not wanted.
	mux.HandleFunc("GET /static/console.css", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		_, _ = w.Write(stylesheet)
	})
	return mux
}

// ServeHTTP serves the console. Mount it under any prefix with
// http.StripPrefix, behind the service's own authentication:
//
//	mux.Handle("/wharf/", http.StripPrefix("/wharf", auth(console)))
//
// Links and redirects keep the prefix (read from the request's original
// URI). Every answer forbids framing, caching and inline scripts.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// basePath is the prefix the console is mounted under: the part of the
// request's original path that http.StripPrefix removed ("" at the root).
func basePath(r *http.Request) string {
	u, err := url.ParseRequestURI(r.RequestURI)
	if err != nil {
		return ""
	}
	full, rel := u.EscapedPath(), r.URL.EscapedPath()
	if !strings.HasSuffix(full, rel) {
		return ""
	}
	return strings.TrimSuffix(full[:len(full)-len(rel)], "/")
}

// needDLQ answers 404 for the dead-letter pages of a console without a
// dead letter queue.
func (c *Console) needDLQ(next http.HandlerFunc) http.HandlerFunc {
	return c.need(c.parts.dlq != nil, "this console has no dead letter queue", next)
}

// needQueue answers 404 for the pause actions of a console without a
// queue.
func (c *Console) needQueue(next http.HandlerFunc) http.HandlerFunc {
	return c.need(c.parts.queue != nil, "this console has no queue", next)
}

// need is next when the console has the piece next serves (have), and
// otherwise a 404 saying msg. The pieces are fixed by New, so the choice
// is made once, when the routes are mapped.
func (c *Console) need(have bool, msg string, next http.HandlerFunc) http.HandlerFunc {
	if have {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, http.StatusNotFound, msg)
	}
}

// badRequest is an error whose message is safe and useful to show: a
// filter or form value the console cannot read (400).
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

// failErr answers for err: 400 with its message for a *badRequest, 500
// (logged, with a generic message) for anything else, which may hold
// details of the database the operator's browser need not see.
func (c *Console) failErr(w http.ResponseWriter, r *http.Request, what string, err error) {
	var bad *badRequest
	if errors.As(err, &bad) {
		c.fail(w, r, http.StatusBadRequest, bad.msg)
		return
	}
	c.log.ErrorContext(r.Context(), "console: "+what, "path", r.URL.Path, "error", err)
	c.fail(w, r, http.StatusInternalServerError, what+" failed; the error is in the service's log")
}

// fail renders the error page with status and msg.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	c.render(w, r, status, "error", http.StatusText(status), errorPage{Status: status, Message: msg})
}

// errorPage is the data of the error page.
type errorPage struct {
	Status  int
	Message string
}
