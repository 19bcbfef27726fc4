package wharf_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// The fuzz targets of the ingest path. Their seed corpora are in
// testdata/fuzz/<target>/ (hand-written from the providers' published
// examples, plus what `go test -fuzz` found interesting); .ci/fuzz runs
// each for a few seconds. The properties:
//
//   - signature targets (one per scheme): a request signed by the Sign
//     helper with a random key verifies under that key; a verifier with a
//     fixed key accepts it exactly when the provider's MAC, computed here
//     from the provider's documentation, is the same under both keys; any
//     change of the body, the signed timestamp, the signed id or the
//     signature's bytes is refused; arbitrary signature header text is
//     refused unless it carries the MAC the verifier must compute; and
//     every refusal wraps ErrInvalidSignature.
//   - FuzzIdentify: every extractor returns an id and a type the queue can
//     store (valid UTF-8, no NUL, at most 255 bytes), equal to what the
//     provider's documentation and encoding/json give, or a typed error.
//   - FuzzHandler: random requests get only documented statuses, and a
//     queue row (holding the body verbatim) appears exactly for a 202.

// fuzzFixedKey is the key of the "fixed" verifier that random keys are
// checked against.
var fuzzFixedKey = []byte("wharf-fuzz-fixed-key")

// sigScheme describes one signature scheme for fuzzSignature.
type sigScheme struct {
	header string // the header that carries the signature
	// secret turns fuzzed bytes into a secret of the provider's format.
	secret func(key []byte) string
	// verifier returns the verifier for secret, its clock at now.
	verifier func(secret string, now time.Time) wharf.Verifier
	// sign signs with the package's Sign helper.
	sign func(secret, id string, ts time.Time, body []byte) http.Header
	// mac is the MAC a request with these headers must carry, computed
	// from the provider's documentation, not with the package's code.
	mac func(secret string, h http.Header, body []byte) []byte
	// format writes mac as the request's signature, as the provider does.
	format func(h http.Header, mac []byte)
	// timestamp and setTimestamp read and replace the signed timestamp;
	// nil when the scheme signs none.
	timestamp    func(h http.Header) string
	setTimestamp func(h http.Header, ts string)
	idHeader     string // a signed id header, "" when none
}

func hmacOf(newHash func() hash.Hash, key []byte, parts ...string) []byte {
	m := hmac.New(newHash, key)
	for _, p := range parts {
		m.Write([]byte(p))
	}
	return m.Sum(nil)
}

// literalSecret is the secret of the schemes that use it as bytes.
func literalSecret(key []byte) string {
	if len(key) == 0 {
		return "k"
	}
	return string(key)
}

// clockedVerifier is a sigScheme.verifier for a timestamped scheme.
func clockedVerifier(build func(secret string) wharf.Verifier) func(string, time.Time) wharf.Verifier {
	return func(secret string, now time.Time) wharf.Verifier {
		v := build(secret)
		wharf.SetClock(v, at(now))
		return v
	}
}

func headerField(name string) (func(http.Header) string, func(http.Header, string)) {
	return func(h http.Header) string { return h.Get(name) }, func(h http.Header, v string) { h.Set(name, v) }
}

func setHeader(name, prefix string, encode func([]byte) string) func(http.Header, []byte) {
	return func(h http.Header, mac []byte) { h.Set(name, prefix+encode(mac)) }
}

func standardWebhooksScheme() sigScheme {
	ts, setTS := headerField("Webhook-Timestamp")
	return sigScheme{
		header: "Webhook-Signature",
		secret: func(key []byte) string {
			if len(key) == 0 {
				key = []byte{0}
			}
			return "whsec_" + base64.StdEncoding.EncodeToString(key)
		},
		verifier: clockedVerifier(func(secret string) wharf.Verifier { return wharf.StandardWebhooks(secret) }),
		sign:     wharf.SignStandardWebhooks,
		mac: func(secret string, h http.Header, body []byte) []byte {
			key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
			return hmacOf(sha256.New, key, h.Get("Webhook-Id")+"."+h.Get("Webhook-Timestamp")+".", string(body))
		},
		format:    setHeader("Webhook-Signature", "v1,", base64.StdEncoding.EncodeToString),
		timestamp: ts, setTimestamp: setTS,
		idHeader: "Webhook-Id",
	}
}

// stripeT is Stripe's t, read the way Stripe documents the header.
func stripeT(h http.Header) string {
	for _, item := range strings.Split(h.Get("Stripe-Signature"), ",") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(item), "t="); ok {
			return t
		}
	}
	return ""
}

func stripeScheme() sigScheme {
	return sigScheme{
		header:   "Stripe-Signature",
		secret:   literalSecret,
		verifier: clockedVerifier(func(secret string) wharf.Verifier { return wharf.Stripe(secret) }),
		sign: func(secret, _ string, ts time.Time, body []byte) http.Header {
			return wharf.SignStripe(secret, ts, body)
		},
		mac: func(secret string, h http.Header, body []byte) []byte {
			return hmacOf(sha256.New, []byte(secret), stripeT(h)+".", string(body))
		},
		format: func(h http.Header, mac []byte) {
			h.Set("Stripe-Signature", "t="+stripeT(h)+",v1="+hex.EncodeToString(mac))
		},
		timestamp: stripeT,
		setTimestamp: func(h http.Header, ts string) {
			_, rest, _ := strings.Cut(h.Get("Stripe-Signature"), ",")
			h.Set("Stripe-Signature", "t="+ts+","+rest)
		},
	}
}

// bodyOnlyScheme is a scheme that signs the body alone (GitHub, Shopify).
func bodyOnlyScheme(header, prefix string, encode func([]byte) string, verifier func(string) wharf.Verifier, sign func(secret string, body []byte) http.Header) sigScheme {
	return sigScheme{
		header:   header,
		secret:   literalSecret,
		verifier: func(secret string, _ time.Time) wharf.Verifier { return verifier(secret) },
		sign:     func(secret, _ string, _ time.Time, body []byte) http.Header { return sign(secret, body) },
		mac: func(secret string, _ http.Header, body []byte) []byte {
			return hmacOf(sha256.New, []byte(secret), string(body))
		},
		format: setHeader(header, prefix, encode),
	}
}

func githubScheme() sigScheme {
	return bodyOnlyScheme("X-Hub-Signature-256", "sha256=", hex.EncodeToString,
		func(s string) wharf.Verifier { return wharf.GitHub(s) }, wharf.SignGitHub)
}

func shopifyScheme() sigScheme {
	return bodyOnlyScheme("X-Shopify-Hmac-Sha256", "", base64.StdEncoding.EncodeToString,
		func(s string) wharf.Verifier { return wharf.Shopify(s) }, wharf.SignShopify)
}

func slackScheme() sigScheme {
	ts, setTS := headerField("X-Slack-Request-Timestamp")
	return sigScheme{
		header:   "X-Slack-Signature",
		secret:   literalSecret,
		verifier: clockedVerifier(func(secret string) wharf.Verifier { return wharf.Slack(secret) }),
		sign: func(secret, _ string, ts time.Time, body []byte) http.Header {
			return wharf.SignSlack(secret, ts, body)
		},
		mac: func(secret string, h http.Header, body []byte) []byte {
			return hmacOf(sha256.New, []byte(secret), "v0:"+h.Get("X-Slack-Request-Timestamp")+":", string(body))
		},
		format:    setHeader("X-Slack-Signature", "v0=", hex.EncodeToString),
		timestamp: ts, setTimestamp: setTS,
	}
}

// hmacVariant is the generic verifier configured by variant: its hash,
// encoding, prefix, separator and timestamp header all vary.
func hmacVariant(variant uint8) (cfg func(secret string) *wharf.HMACVerifier, newHash func() hash.Hash) {
	n := int(variant)
	hashes := []func() hash.Hash{sha256.New, sha512.New, sha1.New}
	newHash = hashes[n%3]
	encoding := []wharf.SignatureEncoding{wharf.HexEncoding, wharf.Base64Encoding}[n/3%2]
	prefix := []string{"", "sha256=", "v1,"}[n/6%3]
	separator := []string{"", " ", ","}[n/18%3]
	tsHeader := []string{"", "X-Timestamp"}[n/54%2]
	return func(secret string) *wharf.HMACVerifier {
		v := wharf.HMAC("X-Signature", secret)
		v.Hash, v.Encoding, v.Prefix, v.Separator, v.TimestampHeader = newHash, encoding, prefix, separator, tsHeader
		return v
	}, newHash
}

func hmacScheme(variant uint8) sigScheme {
	cfg, newHash := hmacVariant(variant)
	shape := cfg("shape")
	s := sigScheme{
		header:   "X-Signature",
		secret:   literalSecret,
		verifier: clockedVerifier(func(secret string) wharf.Verifier { return cfg(secret) }),
		sign: func(secret, _ string, ts time.Time, body []byte) http.Header {
			return wharf.SignHMAC(cfg(secret), secret, ts, body)
		},
		mac: func(secret string, h http.Header, body []byte) []byte {
			if shape.TimestampHeader == "" {
				return hmacOf(newHash, []byte(secret), string(body))
			}
			return hmacOf(newHash, []byte(secret), h.Get(shape.TimestampHeader)+".", string(body))
		},
		format: func(h http.Header, mac []byte) {
			enc := hex.EncodeToString(mac)
			if shape.Encoding == wharf.Base64Encoding {
				enc = base64.StdEncoding.EncodeToString(mac)
			}
			h.Set("X-Signature", shape.Prefix+enc)
		},
	}
	if shape.TimestampHeader != "" {
		s.timestamp, s.setTimestamp = headerField(shape.TimestampHeader)
	}
	return s
}

// carries reports whether one of the tokens of the header values, decoded
// as hex or base64 (padded or not), is mac: the reference for "this
// request holds the signature the verifier must compute".
func carries(values []string, mac []byte) bool {
	for _, v := range values {
		for _, tok := range strings.FieldsFunc(v, func(r rune) bool { return strings.ContainsRune(" ,=\t", r) }) {
			if b, err := hex.DecodeString(tok); err == nil && hmac.Equal(b, mac) {
				return true
			}
			if b, err := base64.RawStdEncoding.DecodeString(tok); err == nil && hmac.Equal(b, mac) {
				return true
			}
		}
	}
	return false
}

// flipped returns s with one bit of one byte changed, or "0" for "".
func flipped(s string, pos uint16) string {
	if s == "" {
		return "0"
	}
	b := []byte(s)
	b[int(pos)%len(b)] ^= 1 << (pos >> 13)
	return string(b)
}

// fuzzSignature runs the signature properties (see the top of this file)
// on one scheme; variant only matters to the generic HMAC.
func fuzzSignature(f *testing.F, scheme func(variant uint8) sigScheme) {
	fuzzSignatureSeeds(f)
	f.Fuzz(func(t *testing.T, variant uint8, key []byte, id string, unix uint64, body []byte, extra string, op uint8, pos uint16) {
		s := scheme(variant)
		ctx := context.Background()
		secret := s.secret(key)
		ts := time.Unix(int64(unix%1e12), 0)
		if id == "" {
			id = "msg_fuzz"
		}
		requireRefused := func(what string, h http.Header, body []byte) {
			t.Helper()
			err := s.verifier(secret, ts).Verify(ctx, h, body)
			require.ErrorIs(t, err, wharf.ErrInvalidSignature, "%s: headers %q, body %q", what, h, body)
		}

		if err := wharf.Validate(s.verifier(secret, ts)); err != nil {
			// Only a generic HMAC configuration may be refused, up front
			// (and SignHMAC panics on it).
			require.ErrorIs(t, err, wharf.ErrInvalidSource)
			return
		}
		// A valid signature round-trips, and is the documented MAC.
		h := s.sign(secret, id, ts, body)
		require.NoError(t, s.verifier(secret, ts).Verify(ctx, h, body), "headers %q", h)
		require.True(t, carries(h.Values(s.header), s.mac(secret, h, body)), "the Sign helper's %s is the documented MAC", s.header)

		// A fixed-key verifier accepts the random key's signature only
		// when HMAC gives both keys the same MAC (equal keys, or keys
		// equal once HMAC pads them with zeros).
		fixed := s.secret(fuzzFixedKey)
		err := s.verifier(fixed, ts).Verify(ctx, h, body)
		if hmac.Equal(s.mac(fixed, h, body), s.mac(secret, h, body)) {
			require.NoError(t, err)
		} else {
			require.ErrorIs(t, err, wharf.ErrInvalidSignature)
		}

		// One change, chosen by op.
		m := h.Clone()
		switch kind := op % 5; {
		case kind == 1 && s.timestamp != nil:
			old := s.timestamp(m)
			next := extra
			// Only a different number is a change: verifiers read the
			// number, skipping spaces and empty list items around it
			// ("0 " and "0," are the "0" they sign and check). A bit
			// flipped in one byte of the number always changes it.
			if !isDigits(next) || next == old {
				next = flipped(old, pos)
			}
			s.setTimestamp(m, next)
			requireRefused("timestamp changed", m, body)
		case kind == 2 && s.idHeader != "":
			next := extra
			if next == "" || next == m.Get(s.idHeader) {
				next = flipped(m.Get(s.idHeader), pos)
			}
			m.Set(s.idHeader, next)
			requireRefused("id changed", m, body)
		case kind == 3:
			mac := s.mac(secret, h, body)
			mac[int(pos)%len(mac)] ^= 1 << (pos >> 13)
			s.format(m, mac)
			requireRefused("signature bit flipped", m, body)
		case kind == 4:
			// Arbitrary signature text, instead of or besides the valid one.
			if op&0x80 == 0 {
				m.Del(s.header)
			}
			m.Add(s.header, extra)
			err := s.verifier(secret, ts).Verify(ctx, m, body)
			if err == nil {
				require.True(t, carries(m.Values(s.header), s.mac(secret, m, body)), "accepted %q without the MAC", m.Values(s.header))
			} else {
				require.ErrorIs(t, err, wharf.ErrInvalidSignature)
			}
		default:
			changed := []byte(flipped(string(body), pos))
			if len(extra) > 0 && op&0x80 != 0 {
				changed = append(bytes.Clone(body), extra...)
			}
			requireRefused("body changed", m, changed)
		}
	})
}

// fuzzSignatureSeeds adds a few inline seeds to every signature target;
// the providers' published examples are in the corpus files.
func fuzzSignatureSeeds(f *testing.F) {
	body := []byte(`{"id":"evt_1","type":"invoice.paid"}`)
	for op := range uint8(5) {
		f.Add(uint8(0), []byte("secret"), "msg_1", uint64(1_700_000_000), body, "", op, uint16(7))
	}
	f.Add(uint8(200), []byte{}, "", uint64(0), []byte{}, "v1,"+strings.Repeat("A", 43)+"=", uint8(4), uint16(0))
	f.Add(uint8(41), fuzzFixedKey, "msg_2", uint64(999_999_999_999), []byte("\x00\xff"), "t=1,v1=,v1==,=,,t", uint8(0x84), uint16(0xffff))
}

// FuzzStandardWebhooksSignature: webhook-signature, webhook-id and
// webhook-timestamp (see fuzzSignature).
func FuzzStandardWebhooksSignature(f *testing.F) {
	fuzzSignature(f, func(uint8) sigScheme { return standardWebhooksScheme() })
}

// FuzzStripeSignature: Stripe-Signature's t=...,v1=... lists.
func FuzzStripeSignature(f *testing.F) {
	fuzzSignature(f, func(uint8) sigScheme { return stripeScheme() })
}

// FuzzGitHubSignature: X-Hub-Signature-256.
func FuzzGitHubSignature(f *testing.F) {
	fuzzSignature(f, func(uint8) sigScheme { return githubScheme() })
}

// FuzzShopifySignature: X-Shopify-Hmac-Sha256.
func FuzzShopifySignature(f *testing.F) {
	fuzzSignature(f, func(uint8) sigScheme { return shopifyScheme() })
}

// FuzzSlackSignature: X-Slack-Signature and X-Slack-Request-Timestamp.
func FuzzSlackSignature(f *testing.F) {
	fuzzSignature(f, func(uint8) sigScheme { return slackScheme() })
}

// FuzzHMACSignature: the generic verifier in 108 configurations (hash,
// encoding, prefix, separator, timestamp header; see hmacVariant).
func FuzzHMACSignature(f *testing.F) {
	fuzzSignature(f, hmacScheme)
}

// storableText is the queue's rule for ids, types and ordering keys.
func storableText(s string, required bool) bool {
	if s == "" {
		return !required
	}
	return len(s) <= queue.MaxIDLen && utf8.ValidString(s) && !strings.Contains(s, "\x00")
}

// requireUsableIdentity checks an extractor's result: a storable identity,
// or an error of the documented kinds. It reports whether there was one.
func requireUsableIdentity(t *testing.T, ident wharf.Identity, err error) bool {
	t.Helper()
	if err != nil {
		var ie *wharf.IdentityError
		require.ErrorAs(t, err, &ie, "untyped error %v", err)
		require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
		require.Contains(t, []string{"id", "type", "ordering key"}, ie.Field)
		require.Equal(t, wharf.Identity{}, ident)
		return false
	}
	require.True(t, storableText(ident.ID, true), "id %q", ident.ID)
	require.True(t, storableText(ident.Type, true), "type %q", ident.Type)
	require.True(t, storableText(ident.OrderingKey, false), "ordering key %q", ident.OrderingKey)
	require.NotEqual(t, queue.AnyType, ident.Type)
	return true
}

// jsonMember is the top-level member name of body as encoding/json reads
// it: a string's text, a number's text as written; ok false otherwise.
func jsonMember(body []byte, name string) (string, bool) {
	var doc map[string]json.RawMessage
	if json.Unmarshal(body, &doc) != nil || doc[name] == nil {
		return "", false
	}
	raw := bytes.TrimSpace(doc[name])
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return string(raw), true
	}
	return "", false
}

// FuzzIdentify runs every extractor on arbitrary headers and bodies: each
// provider's default identity, FromHeader and FromJSON overrides, with and
// without a default to fall back on.
func FuzzIdentify(f *testing.F) {
	for _, seed := range []struct{ body, id, typ, name, path string }{
		{`{"id":"evt_1","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}`, "d1", "push", "X-Request-Id", "data.object.customer"},
		{`{"id":820982911946154508,"type":"a.b"}`, "", "", "X-Id", "id"},
		{`{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention"}}`, "msg_1", "orders/create", "Webhook-Id", "event.type"},
		{`payload=%7B%22type%22%3A%22block_actions%22%2C%22trigger_id%22%3A%22t1%22%7D`, "e\x00", "\xff", "", ""},
		{`{"id":"\ud800","type":"\udfff"}`, "x", "*", "X-Id", `a\.b`},
		{`[1,2,3]`, strings.Repeat("i", 256), "t", "X-Id", "0"},
	} {
		f.Add([]byte(seed.body), seed.id, seed.typ, seed.name, seed.path)
	}
	defaults := []wharf.Identifier{
		wharf.StandardWebhooks(testSecret), wharf.Stripe("s"), wharf.GitHub("s"), wharf.Shopify("s"), wharf.Slack("s"),
		wharf.HMAC("X-Signature", "s"), wharf.NoVerification("fuzz"),
	}
	f.Fuzz(func(t *testing.T, body []byte, id, typ, name, path string) {
		h := http.Header{}
		for _, k := range []string{"Webhook-Id", "X-GitHub-Delivery", "X-Shopify-Event-Id"} {
			h.Set(k, id)
		}
		for _, k := range []string{"X-GitHub-Event", "X-Shopify-Topic"} {
			h.Set(k, typ)
		}
		if name != "" {
			h.Set(name, id)
		}

		// Each provider's default.
		for _, d := range defaults {
			ident, err := d.Identify(h, body)
			if !requireUsableIdentity(t, ident, err) {
				continue
			}
			switch d.(type) {
			case *wharf.StandardWebhooksVerifier:
				require.Equal(t, h.Get("Webhook-Id"), ident.ID)
			case *wharf.GitHubVerifier:
				require.Equal(t, wharf.Identity{ID: h.Get("X-GitHub-Delivery"), Type: h.Get("X-GitHub-Event")}, ident)
			case *wharf.ShopifyVerifier:
				require.Equal(t, h.Get("X-Shopify-Topic")+":"+h.Get("X-Shopify-Event-Id"), ident.ID)
			case *wharf.StripeVerifier:
				wantID, _ := jsonMember(body, "id")
				wantType, _ := jsonMember(body, "type")
				require.Equal(t, wharf.Identity{ID: wantID, Type: wantType}, ident)
			}
		}
		// GitHub's identity is its headers: accepted exactly when they
		// are storable.
		_, err := wharf.GitHub("s").Identify(h, body)
		want := storableText(h.Get("X-GitHub-Delivery"), true) && storableText(h.Get("X-GitHub-Event"), true) && h.Get("X-GitHub-Event") != queue.AnyType
		require.Equal(t, want, err == nil, "github identity of %q: %v", h, err)

		// Overrides, with and without a default to fall back on.
		for i, fields := range []wharf.SourceFields{
			{ID: wharf.FromHeader(name), Type: wharf.FromJSON(path)},
			{ID: wharf.FromJSON(path), Type: wharf.FromHeader(name), OrderingKey: wharf.FromJSON(path)},
			{OrderingKey: wharf.FromJSON(path)},
		} {
			for _, fallback := range []wharf.Identifier{nil, defaults[1], defaults[4]} {
				ident, err := wharf.IdentifyWith(fields, fallback, h, body)
				if errors.Is(err, wharf.ErrInvalidSource) {
					// An unusable field: the same whatever the request.
					_, again := wharf.IdentifyWith(fields, nil, http.Header{}, nil)
					require.ErrorIs(t, again, wharf.ErrInvalidSource)
					continue
				}
				if requireUsableIdentity(t, ident, err) && i == 0 {
					require.Equal(t, h.Get(name), ident.ID)
				}
			}
		}
		if path == "id" || path == "type" {
			ident, err := wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromJSON(path), Type: wharf.FromJSON(path)}, nil, h, body)
			if err == nil {
				want, ok := jsonMember(body, path)
				require.True(t, ok)
				require.Equal(t, want, ident.ID)
			}
		}
	})
}

// fuzzSource is one source of FuzzHandler's pipeline: its verifier, and
// how to sign a body and name an event for it.
type fuzzSource struct {
	name     string
	verifier wharf.Verifier
	fields   wharf.SourceFields
	sign     func(id string, body []byte) http.Header // nil: no signature needed
	identify func(h http.Header, id, typ string)      // identity headers, where the source reads them
}

func fuzzSources() []fuzzSource {
	clockedAt := func(v wharf.Verifier) wharf.Verifier { wharf.SetClock(v, at(fixedNow)); return v }
	generic := func() *wharf.HMACVerifier { return wharf.HMAC("X-Signature", "generic") }
	none := func(http.Header, string, string) {}
	return []fuzzSource{
		{name: "sw", verifier: clockedAt(wharf.StandardWebhooks(testSecret)),
			sign:     func(id string, b []byte) http.Header { return wharf.SignStandardWebhooks(testSecret, id, fixedNow, b) },
			identify: none},
		{name: "stripe", verifier: clockedAt(wharf.Stripe("whsec_fuzz")),
			sign:     func(_ string, b []byte) http.Header { return wharf.SignStripe("whsec_fuzz", fixedNow, b) },
			identify: none},
		{name: "github", verifier: wharf.GitHub("gh"),
			sign: func(_ string, b []byte) http.Header { return wharf.SignGitHub("gh", b) },
			identify: func(h http.Header, id, typ string) {
				h.Set("X-GitHub-Delivery", id)
				h.Set("X-GitHub-Event", typ)
			}},
		{name: "shopify", verifier: wharf.Shopify("shop"),
			sign: func(_ string, b []byte) http.Header { return wharf.SignShopify("shop", b) },
			identify: func(h http.Header, id, typ string) {
				h.Set("X-Shopify-Event-Id", id)
				h.Set("X-Shopify-Topic", typ)
			}},
		{name: "slack", verifier: clockedAt(wharf.Slack("slack")),
			sign:     func(_ string, b []byte) http.Header { return wharf.SignSlack("slack", fixedNow, b) },
			identify: none},
		{name: "generic", verifier: generic(), fields: wharf.SourceFields{ID: wharf.FromHeader("X-Event-Id"), Type: wharf.FromJSON("type")},
			sign:     func(_ string, b []byte) http.Header { return wharf.SignHMAC(generic(), "generic", time.Time{}, b) },
			identify: func(h http.Header, id, _ string) { h.Set("X-Event-Id", id) }},
		{name: "none", verifier: wharf.NoVerification("fuzz"), fields: wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromHeader("X-Event-Type"), OrderingKey: wharf.FromHeader("X-Key")},
			identify: func(h http.Header, _, typ string) { h.Set("X-Event-Type", typ) }},
	}
}

// fuzzHandlerStatuses are the answers Pipeline.Handler documents for a
// registered, well-configured source.
var fuzzHandlerStatuses = []int{200, 202, 400, 401, 405, 408, 413, 503}

// FuzzHandler sends random requests to Pipeline.Handler: random source,
// method, identity, extra header and body, signed or not. One database
// for the whole target.
func FuzzHandler(f *testing.F) {
	for _, seed := range []struct {
		which, method uint8
		sign          bool
		id, typ       string
		name, value   string
		body          string
	}{
		{0, 0, true, "msg_1", "", "", "", `{"type":"invoice.paid"}`},
		{1, 0, true, "", "", "", "", `{"id":"evt_1","type":"invoice.paid"}`},
		{2, 0, true, "d-1", "push", "Content-Type", "application/json", `{"action":"opened"}`},
		{3, 0, true, "e-1", "orders/create", "", "", `{"foo": "bar"}`},
		{4, 0, true, "", "", "Content-Type", "application/json", `{"type":"url_verification","challenge":"c"}`},
		{4, 0, true, "", "", "", "", `token=x&command=%2Fdeploy&trigger_id=t1`},
		{5, 0, true, "g-1", "", "Authorization", "Bearer x", `{"type":"a.b"}`},
		{6, 0, false, "", "t", "X-Key", "k", `{"id":"n-1"}`},
		{6, 0, false, "", "t", "X-Key", "k\xff", `{"id":"n-2"}`},
		{6, 7, false, "", "t", "", "", `{"id":"n-3"}`},
		{0, 0, false, "msg_2", "", "Webhook-Signature", "v1,AAAA", `{"type":"x"}`},
		{1, 0, true, "", "", "", "", `{"id":"evt_\u0000","type":"*"}`},
	} {
		f.Add(seed.which, seed.method, seed.sign, seed.id, seed.typ, seed.name, seed.value, []byte(seed.body))
	}

	pool := dbtest.Pool(f)
	p, err := wharf.New(pool, wharf.Config{MaxBodyBytes: 4096})
	require.NoError(f, err)
	f.Cleanup(p.Close)
	sources := fuzzSources()
	for _, s := range sources {
		require.NoError(f, p.Source(s.name, s.verifier, s.fields))
	}
	methods := []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead, "PROPFIND"}
	count := func(t *testing.T) int {
		var n int
		require.NoError(t, pool.QueryRow(context.Background(),
			`SELECT (SELECT count(*) FROM wharf.queue) + (SELECT count(*) FROM wharf.queue_payloads)`).Scan(&n))
		return n
	}

	f.Fuzz(func(t *testing.T, which, method uint8, sign bool, id, typ, name, value string, body []byte) {
		src := sources[int(which)%len(sources)]
		h := http.Header{}
		src.identify(h, id, typ)
		signed := sign && src.sign != nil
		if signed {
			for k, v := range src.sign(id, body) {
				h[k] = v
			}
		}
		if name != "" {
			h[name] = append(h[name], value)
		}
		m := http.MethodPost
		if method%8 == 7 {
			m = methods[int(method/8)%len(methods)]
		}
		req := httptest.NewRequest(m, "/", bytes.NewReader(body))
		req.Header = h
		rec := httptest.NewRecorder()

		before := count(t)
		p.Handler(src.name).ServeHTTP(rec, req)
		after := count(t)

		status := rec.Code
		require.Contains(t, fuzzHandlerStatuses, status, "undocumented status; body %q", rec.Body.String())
		if status == http.StatusAccepted {
			require.Equal(t, 2, after-before, "a 202 stores one queue row and its payload")
			var stored []byte
			require.NoError(t, pool.QueryRow(context.Background(),
				`SELECT body FROM wharf.queue_payloads ORDER BY queue_id DESC LIMIT 1`).Scan(&stored))
			require.Equal(t, body, stored, "the body is stored verbatim")
		} else {
			require.Equal(t, before, after, "status %d stored something", status)
		}
		if status == http.StatusOK || status == http.StatusAccepted {
			require.Equal(t, http.MethodPost, m)
			if _, unverified := src.verifier.(*wharf.NoVerifier); !unverified {
				require.True(t, signed, "an unsigned request was accepted")
			}
		}
	})
}

// Regressions found by the fuzz targets and the edge tests.

// TestHMACPrefixHoldingTheSeparatorIsRefused: FuzzHMACSignature found that
// Prefix "v1," with Separator "," verified nothing, not even what
// SignHMAC signed (Verify splits on the separator before it looks for the
// prefix), and the source was registered without complaint. Such a
// configuration is now refused up front.
func TestHMACPrefixHoldingTheSeparatorIsRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ prefix, separator string }{{"v1,", ","}, {"v1 sig=", " "}, {" sha256=", ""}, {"\tv1,", " "}} {
		v := wharf.HMAC("X-Signature", "secret")
		v.Prefix, v.Separator = c.prefix, c.separator
		require.ErrorIs(t, wharf.Validate(v), wharf.ErrInvalidSource, "%+v", c)
		require.ErrorIs(t, v.Verify(context.Background(), http.Header{}, nil), wharf.ErrInvalidSource, "%+v", c)
	}
	v := wharf.HMAC("X-Signature", "secret")
	v.Prefix, v.Separator = "v1,", " "
	body := []byte(`{"id":"1"}`)
	require.NoError(t, v.Verify(context.Background(), wharf.SignHMAC(v, "secret", time.Time{}, body), body))
}

// TestIdentifyRefusesLoneSurrogates: the edge tests found that a JSON id or
// type holding a lone UTF-16 surrogate escape ("\ud800") was decoded to
// U+FFFD, as encoding/json does, so that two distinct ids became one and
// the second event was answered 200 as a duplicate and dropped. Such a
// value is now refused (400); a valid surrogate pair, or an escaped
// backslash before "u", is not affected.
func TestIdentifyRefusesLoneSurrogates(t *testing.T) {
	t.Parallel()
	v := wharf.Stripe("s")
	for _, id := range []string{`\ud800`, `\udfff`, `a\ud83d`, `\ud83d\u0041`, `\ude00\ud83d`, `x\\\ud800`} {
		_, err := v.Identify(http.Header{}, []byte(`{"id":"`+id+`","type":"t"}`))
		var ie *wharf.IdentityError
		require.ErrorAs(t, err, &ie, id)
		require.Equal(t, "id", ie.Field)
		require.Contains(t, ie.Reason, "lone surrogate")
	}
	for id, want := range map[string]string{`\ud83d\ude00`: "😀", `\\ud800`: `\ud800`, `\u00e9\uD83D\uDE00`: "é😀"} {
		ident, err := v.Identify(http.Header{}, []byte(`{"id":"`+id+`","type":"t"}`))
		require.NoError(t, err, id)
		require.Equal(t, want, ident.ID)
	}
}

// isDigits reports whether s is a non-empty string of ASCII digits.
func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}
