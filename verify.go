package wharf

import (
	"context"
	"crypto/hmac"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"iter"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is how far the timestamp a provider signs may be from
// this process's clock, in either direction, before the request is refused
// as a replay (stale) or forged (from the future). Verifiers whose scheme
// signs a timestamp use it when their Tolerance is zero.
const DefaultTolerance = 5 * time.Minute

// maxSignatures bounds how many candidate signatures one request may carry
// (every provider sends one, or a few during a secret rotation), so a huge
// header costs a bounded number of decodings and allocations; the rest of
// the work is a scan linear in the header's size, which the server bounds
// (http.Server.MaxHeaderBytes).
const maxSignatures = 32

var (
	// ErrInvalidSignature is wrapped by every verification failure: a
	// missing, malformed, stale or wrong signature, or a request signed
	// with none of the secrets. The error's message says why, for logs; the
	// HTTP layer answers 401 with the body "invalid signature" and nothing
	// more, so a forger learns nothing from the answer.
	ErrInvalidSignature = errors.New("wharf: invalid signature")

	// ErrInvalidIdentity is wrapped when a verified request lacks the event
	// id or type, or when one of them (or the ordering key) is unusable:
	// not valid UTF-8, holding a NUL byte, or longer than the queue stores.
	// The HTTP layer answers 400.
	ErrInvalidIdentity = errors.New("wharf: invalid event identity")

	// ErrInvalidSource is wrapped when a verifier or the identity fields of
	// a source cannot work as configured: no secret, an empty or malformed
	// secret, a negative tolerance, an unusable JSON path, a missing
	// reason for NoVerification. It is the service's fault, not the
	// sender's: the HTTP layer answers 500, and Pipeline.Source reports it
	// at registration.
	ErrInvalidSource = errors.New("wharf: invalid source")
)

// SignatureError says why a request's signature was refused. It wraps
// ErrInvalidSignature. Its message is meant for logs only; never send it
// back to the sender.
type SignatureError struct {
	Provider string // "stripe", "github", "standard webhooks", ...
	Reason   string // "no v1 signature matches", "timestamp is 6m0s old", ...
}

func (e *SignatureError) Error() string {
	return "wharf: invalid signature: " + e.Provider + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrInvalidSignature) true.
func (e *SignatureError) Unwrap() error { return ErrInvalidSignature }

func invalidSignature(provider, format string, args ...any) error {
	return &SignatureError{Provider: provider, Reason: fmt.Sprintf(format, args...)}
}

func invalidSource(provider, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidSource, provider, fmt.Sprintf(format, args...))
}

// Verifier checks that a request was signed by its provider. It sees the
// raw body bytes exactly as received: verify before parsing, and never
// re-encode the body.
//
// Verify returns nil for an authentic request; an error wrapping
// ErrInvalidSignature (401) when the signature is missing, malformed,
// stale or wrong; an error wrapping ErrInvalidSource (500) when the
// verifier itself is misconfigured; and any other error, such as a failing
// SecretLookup, for a failure that is nobody's fault in particular (503 or
// 500: the provider retries). The verifiers of this package are safe for
// concurrent use.
type Verifier interface {
	Verify(ctx context.Context, header http.Header, body []byte) error
}

// Identity is what a source's event is known by: the provider's event id
// (with the source, the deduplication key), its type ("invoice.paid") and
// an optional ordering key (events of one source with the same key run one
// at a time, in order; see the queue package).
type Identity struct {
	ID          string
	Type        string
	OrderingKey string
}

// Identifier extracts the identity from a verified request; each provider's
// verifier implements it with that provider's defaults. Errors wrap
// ErrInvalidIdentity. IdentifyWith applies a source's overrides over an
// Identifier's defaults.
type Identifier interface {
	Identify(header http.Header, body []byte) (Identity, error)
}

// Handshaker answers a provider's endpoint handshake, such as Slack's
// url_verification challenge. The caller calls Handshake only after Verify
// accepted the request. When handled is true the caller responds with
// status, contentType and response, and stores nothing; when false the
// request is an ordinary event.
type Handshaker interface {
	Handshake(header http.Header, body []byte) (status int, contentType string, response []byte, handled bool)
}

// SecretLookup returns the secrets a request may be signed with, for one
// endpoint that serves many tenants (Stripe Connect accounts, several
// Shopify stores): it may read a header or the raw body to pick the
// tenant. Several secrets mean a rotation: a request signed with any of
// them is accepted.
//
// A verifier calls it only after the request's signature headers parsed,
// so garbage never reaches it. Returning no secret (an unknown tenant)
// refuses the request with ErrInvalidSignature (401). Returning an error
// fails Verify with that error, wrapped but not as ErrInvalidSignature, so
// the HTTP layer answers 503 and the provider retries later: a database
// that is down must not look like a forgery. Return an error wrapping
// ErrInvalidSignature yourself to refuse a request with 401.
type SecretLookup func(ctx context.Context, header http.Header, body []byte) ([]string, error)

// resolveSecrets returns the secrets to try for one request: lookup's when
// set, else fixed (which the verifier's validate has checked).
func resolveSecrets(ctx context.Context, provider string, fixed []string, lookup SecretLookup, header http.Header, body []byte) ([]string, error) {
	if lookup == nil {
		return fixed, nil
	}
	found, err := lookup(ctx, header, body)
	if err != nil {
		return nil, fmt.Errorf("wharf: %s: secret lookup: %w", provider, err)
	}
	if len(found) == 0 {
		return nil, invalidSignature(provider, "the secret lookup has no secret for this request")
	}
	if err := checkSecrets(provider, found); err != nil {
		return nil, fmt.Errorf("%w (returned by the secret lookup)", err)
	}
	return found, nil
}

// checkSecrets refuses empty secrets: an HMAC keyed with "" is one anybody
// can compute, which is what an unset environment variable would give.
func checkSecrets(provider string, list []string) error {
	for i, s := range list {
		if s == "" {
			return invalidSource(provider, "secret %d of %d is empty", i+1, len(list))
		}
	}
	return nil
}

// validateSecrets is the registration-time check shared by the verifiers
// that use fixed secrets or a lookup.
func validateSecrets(provider string, fixed []string, lookup SecretLookup) error {
	if lookup != nil {
		return nil
	}
	if len(fixed) == 0 {
		return invalidSource(provider, "no secret configured (give one to the constructor, or set Lookup)")
	}
	return checkSecrets(provider, fixed)
}

func validateTolerance(provider string, tolerance time.Duration) error {
	if tolerance < 0 {
		return invalidSource(provider, "Tolerance %s is negative", tolerance)
	}
	return nil
}

// sourceValidator is implemented by every verifier of this package: Verify
// runs it first, so a misconfigured verifier fails every request with
// ErrInvalidSource whatever the request holds, and Pipeline.Source calls it
// to refuse a misconfigured source at registration rather than on the
// first request.
type sourceValidator interface {
	validate() error
}

// clockNow returns the clock's time, or the wall clock when clock is nil.
func clockNow(clock func() time.Time) time.Time {
	if clock != nil {
		return clock()
	}
	return time.Now()
}

// toleranceOrDefault returns a verifier's Tolerance, or DefaultTolerance
// when it is zero. A negative one is refused by validate.
func toleranceOrDefault(d time.Duration) time.Duration {
	if d == 0 {
		return DefaultTolerance
	}
	return d
}

// parseUnixSeconds parses a signed timestamp strictly: 1 to 18 ASCII digits,
// no sign, no spaces, no fraction.
func parseUnixSeconds(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// checkAge refuses a signed time further than tolerance from now, either
// way. A timestamp exactly tolerance away is accepted.
func checkAge(provider string, signed, now time.Time, tolerance time.Duration) error {
	// Both differences saturate instead of overflowing.
	if old := now.Sub(signed); old > tolerance {
		return invalidSignature(provider, "timestamp %d is %s old, beyond the %s tolerance", signed.Unix(), old.Truncate(time.Second), tolerance)
	}
	if ahead := signed.Sub(now); ahead > tolerance {
		return invalidSignature(provider, "timestamp %d is %s in the future, beyond the %s tolerance", signed.Unix(), ahead.Truncate(time.Second), tolerance)
	}
	return nil
}

// checkUnixTimestamp parses a timestamp header's value in Unix seconds and
// checks its age.
func checkUnixTimestamp(provider, headerName, raw string, now time.Time, tolerance time.Duration) error {
	if raw == "" {
		return invalidSignature(provider, "header %s is missing", headerName)
	}
	sec, ok := parseUnixSeconds(raw)
	if !ok {
		return invalidSignature(provider, "header %s is not a Unix time in seconds: %q", headerName, truncateForLog(raw))
	}
	return checkAge(provider, time.Unix(sec, 0), now, tolerance)
}

// truncateForLog keeps attacker-controlled text in error messages short.
func truncateForLog(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// signatureEncoding decodes one candidate signature.
type signatureEncoding struct {
	name   string
	decode func(string) ([]byte, bool)
}

var (
	hexSignature    = signatureEncoding{"hex", decodeHex}
	base64Signature = signatureEncoding{"base64", decodeBase64}
)

func decodeHex(s string) ([]byte, bool) {
	b, err := hex.DecodeString(s)
	return b, err == nil
}

// decodeBase64 accepts standard base64, padded or not.
func decodeBase64(s string) ([]byte, bool) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, true
	}
	b, err := base64.RawStdEncoding.DecodeString(s)
	return b, err == nil
}

// splitSignatures yields the candidate signatures of one header value.
type splitSignatures func(value string) iter.Seq[string]

// splitOn returns a splitSignatures that cuts a value at each sep, or
// yields it whole when sep is empty. The parts are produced one at a time,
// so a value of a megabyte of separators allocates nothing.
func splitOn(sep string) splitSignatures {
	if sep == "" {
		return func(v string) iter.Seq[string] {
			return func(yield func(string) bool) { yield(v) }
		}
	}
	return func(v string) iter.Seq[string] { return strings.SplitSeq(v, sep) }
}

// parseSignatures collects the signatures a request carries. Each element of
// values is split by split, each part trimmed (empty parts are skipped), and
// must start with prefix; what follows is decoded and must be size bytes
// long. More than maxSignatures non-empty parts refuse the request.
func parseSignatures(provider, headerName string, values []string, split splitSignatures, prefix string, enc signatureEncoding, size int) ([][]byte, error) {
	var (
		out       [][]byte
		entries   int
		malformed string
	)
	for _, v := range values {
		for p := range split(v) {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			entries++
			if entries > maxSignatures {
				return nil, invalidSignature(provider, "header %s holds more than %d signatures", headerName, maxSignatures)
			}
			rest, ok := strings.CutPrefix(p, prefix)
			if !ok {
				malformed = fmt.Sprintf("a signature does not start with %q", prefix)
				continue
			}
			sig, ok := enc.decode(rest)
			if !ok || len(sig) != size {
				malformed = fmt.Sprintf("a signature is not %d bytes in %s", size, enc.name)
				continue
			}
			out = append(out, sig)
		}
	}
	switch {
	case entries == 0:
		return nil, invalidSignature(provider, "header %s is missing", headerName)
	case len(out) == 0:
		return nil, invalidSignature(provider, "header %s is malformed: %s", headerName, malformed)
	}
	return out, nil
}

// anyMACMatches reports whether mac equals one of the candidates, comparing in
// constant time.
func anyMACMatches(mac []byte, sigs [][]byte) bool {
	ok := false
	for _, s := range sigs {
		if hmac.Equal(mac, s) {
			ok = true
		}
	}
	return ok
}

// anySecretMatches reports whether the HMAC of the concatenated parts
// under any of secrets is one of sigs.
func anySecretMatches(newHash func() hash.Hash, secrets []string, sigs [][]byte, parts ...[]byte) bool {
	for _, s := range secrets {
		if anyMACMatches(macOf(newHash, []byte(s), parts...), sigs) {
			return true
		}
	}
	return false
}

// macOf computes the HMAC of the concatenated parts under key.
func macOf(newHash func() hash.Hash, key []byte, parts ...[]byte) []byte {
	m := hmac.New(newHash, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}
