package console

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// csrfField is the hidden form field that carries the token.
const csrfField = "csrf"

// maxFormBytes bounds a POST's form: the console's forms are a filter and
// a token.
const maxFormBytes = 64 << 10

// csrf protects the console's POSTs twice over: the browser's own
// Sec-Fetch-Site or Origin must say the request comes from the console's
// origin (http.CrossOriginProtection), and the form must carry a token
// only the console can make: a timestamp and its HMAC under a key of its
// own, checked in constant time, valid for a TTL. Neither needs a session
// or a cookie, so the console works behind any authentication middleware.
type csrf struct {
	key    []byte
	ttl    time.Duration
	origin *http.CrossOriginProtection
	now    func() time.Time
}

func newCSRF(key []byte, ttl time.Duration, trusted []string) (*csrf, error) {
	origin := http.NewCrossOriginProtection()
	for _, o := range trusted {
		if err := origin.AddTrustedOrigin(o); err != nil {
			return nil, &ConfigError{"TrustedOrigins", err.Error()}
		}
	}
	return &csrf{key: key, ttl: ttl, origin: origin, now: time.Now}, nil
}

// token returns a fresh token: "<unix seconds>.<base64url HMAC-SHA256>".
func (c *csrf) token() string {
	ts := strconv.FormatInt(c.now().Unix(), 10)
	return ts + "." + base64.RawURLEncoding.EncodeToString(c.mac(ts))
}

func (c *csrf) mac(ts string) []byte {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte("wharf-console-csrf\x00" + ts))
	return m.Sum(nil)
}

// errCSRF is wrapped by every rejection.
var errCSRF = errors.New("cross-site request refused")

// check accepts a POST whose origin is the console's and whose form holds
// a valid token, or says why not.
func (c *csrf) check(r *http.Request) error {
	if err := c.origin.Check(r); err != nil {
		return fmt.Errorf("%w: %v", errCSRF, err)
	}
	tok := r.PostFormValue(csrfField)
	ts, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return fmt.Errorf("%w: the form has no token; reload the page", errCSRF)
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, c.mac(ts)) {
		return fmt.Errorf("%w: the form's token is not valid; reload the page", errCSRF)
	}
	sec, _ := strconv.ParseInt(ts, 10, 64) // it was signed: it parses
	if age := c.now().Sub(time.Unix(sec, 0)); age > c.ttl || age < -time.Minute {
		return fmt.Errorf("%w: the form's token has expired; reload the page", errCSRF)
	}
	return nil
}

// action guards a POST handler: 403 unless actions are enabled and the
// request passes the CSRF checks.
func (c *Console) action(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !c.cfg.AllowActions {
			c.fail(w, r, http.StatusForbidden, "this console is read-only: the service has not enabled actions (Config.AllowActions)")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			c.fail(w, r, http.StatusBadRequest, "the form could not be read")
			return
		}
		if err := c.csrf.check(r); err != nil {
			c.log.WarnContext(r.Context(), "console: refused a POST", "path", r.URL.Path, "error", err)
			c.fail(w, r, http.StatusForbidden, err.Error())
			return
		}
		next(w, r)
	}
}
