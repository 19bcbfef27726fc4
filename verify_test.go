package wharf_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// fixedNow is the clock of every timestamped verifier in these tests.
var fixedNow = time.Unix(1_700_000_000, 0)

func at(t time.Time) func() time.Time { return func() time.Time { return t } }

// body1K is a realistic 1 KB JSON event body.
var body1K = func() []byte {
	b := []byte(`{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1","customer":"cus_9s6XKzkNRiz8i3","lines":"`)
	for len(b) < 1000 {
		b = append(b, 'x')
	}
	return append(b, `"}}}`...)
}()

// provider describes one verifier for the tests every verifier must pass.
type provider struct {
	name        string
	secrets     [2]string // two valid secrets of the provider's format
	timestamped bool
	// verifier returns a verifier with these secrets, its clock at fixedNow.
	verifier func(secrets ...string) wharf.Verifier
	// withLookup returns a verifier without fixed secrets that asks lookup.
	withLookup func(lookup wharf.SecretLookup) wharf.Verifier
	// sign signs body at ts with secret.
	sign func(secret string, ts time.Time, body []byte) http.Header
	// addSignature adds another (wrong) signature next to the valid one.
	addSignature func(h http.Header)
	// malformed breaks a valid signed header set in named ways.
	malformed map[string]func(h http.Header)
}

func swSecret(seed string) string {
	return "whsec_" + base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%-24s", seed)))
}

// genericHMAC is the generic verifier's configuration in these tests: a
// scheme unlike any other provider's.
func genericHMAC(secrets ...string) *wharf.HMACVerifier {
	v := wharf.HMAC("X-Signature", secrets...)
	v.Hash = sha512.New
	v.Encoding = wharf.Base64Encoding
	v.Prefix = "sha512="
	v.Separator = " "
	v.TimestampHeader = "X-Timestamp"
	return v
}

func clocked[V wharf.Verifier](v V) V {
	wharf.SetClock(v, at(fixedNow))
	return v
}

func cut(h http.Header, name string, n int) {
	v := h.Get(name)
	h.Set(name, v[:len(v)-n])
}

func providers() []provider {
	zeros32 := make([]byte, 32)
	return []provider{
		{
			name:        "standard webhooks",
			secrets:     [2]string{swSecret("secret-a"), swSecret("secret-b")},
			timestamped: true,
			verifier: func(s ...string) wharf.Verifier {
				return clocked(wharf.StandardWebhooks(s...))
			},
			withLookup: func(l wharf.SecretLookup) wharf.Verifier {
				v := clocked(wharf.StandardWebhooks())
				v.Lookup = l
				return v
			},
			sign: func(secret string, ts time.Time, body []byte) http.Header {
				return wharf.SignStandardWebhooks(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, body)
			},
			addSignature: func(h http.Header) {
				bogus := "v1," + base64.StdEncoding.EncodeToString(zeros32)
				h.Set("Webhook-Signature", bogus+" v1a,aGVsbG8= "+h.Get("Webhook-Signature")+" "+bogus)
			},
			malformed: map[string]func(http.Header){
				"missing signature": func(h http.Header) { h.Del("Webhook-Signature") },
				"empty signature":   func(h http.Header) { h.Set("Webhook-Signature", "") },
				"bad base64":        func(h http.Header) { h.Set("Webhook-Signature", "v1,!!!!not-base64!!!!") },
				"wrong version": func(h http.Header) {
					h.Set("Webhook-Signature", strings.Replace(h.Get("Webhook-Signature"), "v1,", "v2,", 1))
				},
				"no version":            func(h http.Header) { h.Set("Webhook-Signature", strings.TrimPrefix(h.Get("Webhook-Signature"), "v1,")) },
				"truncated signature":   func(h http.Header) { cut(h, "Webhook-Signature", 4) },
				"missing id":            func(h http.Header) { h.Del("Webhook-Id") },
				"other id":              func(h http.Header) { h.Set("Webhook-Id", "msg_other") },
				"missing timestamp":     func(h http.Header) { h.Del("Webhook-Timestamp") },
				"non-numeric timestamp": func(h http.Header) { h.Set("Webhook-Timestamp", "1.7e9") },
				"signed timestamp":      func(h http.Header) { h.Set("Webhook-Timestamp", "+"+h.Get("Webhook-Timestamp")) },
			},
		},
		{
			name:        "stripe",
			secrets:     [2]string{"whsec_secretA", "whsec_secretB"},
			timestamped: true,
			verifier:    func(s ...string) wharf.Verifier { return clocked(wharf.Stripe(s...)) },
			withLookup: func(l wharf.SecretLookup) wharf.Verifier {
				v := clocked(wharf.Stripe())
				v.Lookup = l
				return v
			},
			sign: wharf.SignStripe,
			addSignature: func(h http.Header) {
				v := h.Get("Stripe-Signature")
				h.Set("Stripe-Signature", v+",v1="+strings.Repeat("0", 64)+",v0="+strings.Repeat("a", 64))
				// and a wrong one before the valid one
				t, rest, _ := strings.Cut(h.Get("Stripe-Signature"), ",")
				h.Set("Stripe-Signature", t+",v1="+strings.Repeat("1", 64)+","+rest)
			},
			malformed: map[string]func(http.Header){
				"missing header": func(h http.Header) { h.Del("Stripe-Signature") },
				"empty header":   func(h http.Header) { h.Set("Stripe-Signature", "") },
				"no timestamp": func(h http.Header) {
					_, rest, _ := strings.Cut(h.Get("Stripe-Signature"), ",")
					h.Set("Stripe-Signature", rest)
				},
				"no v1": func(h http.Header) {
					t, _, _ := strings.Cut(h.Get("Stripe-Signature"), ",")
					h.Set("Stripe-Signature", t)
				},
				"bad hex": func(h http.Header) {
					t, _, _ := strings.Cut(h.Get("Stripe-Signature"), ",")
					h.Set("Stripe-Signature", t+",v1="+strings.Repeat("zz", 32))
				},
				"wrong scheme": func(h http.Header) {
					h.Set("Stripe-Signature", strings.Replace(h.Get("Stripe-Signature"), "v1=", "v2=", 1))
				},
				"truncated":      func(h http.Header) { cut(h, "Stripe-Signature", 4) },
				"two timestamps": func(h http.Header) { h.Set("Stripe-Signature", "t=1700000000,"+h.Get("Stripe-Signature")) },
				"not key=value":  func(h http.Header) { h.Set("Stripe-Signature", h.Get("Stripe-Signature")+",garbage") },
				"bad timestamp": func(h http.Header) {
					h.Set("Stripe-Signature", strings.Replace(h.Get("Stripe-Signature"), "t=", "t=x", 1))
				},
				"another timestamp": func(h http.Header) {
					h.Set("Stripe-Signature", strings.Replace(h.Get("Stripe-Signature"), "t=1700000000", "t=1700000001", 1))
				},
			},
		},
		{
			name:       "github",
			secrets:    [2]string{"gh-secret-a", "gh-secret-b"},
			verifier:   func(s ...string) wharf.Verifier { return wharf.GitHub(s...) },
			withLookup: func(l wharf.SecretLookup) wharf.Verifier { v := wharf.GitHub(); v.Lookup = l; return v },
			sign:       func(secret string, _ time.Time, body []byte) http.Header { return wharf.SignGitHub(secret, body) },
			addSignature: func(h http.Header) {
				h.Set("X-Hub-Signature-256", "sha256="+strings.Repeat("0", 64)+", "+h.Get("X-Hub-Signature-256"))
				h.Add("X-Hub-Signature-256", "sha256="+strings.Repeat("1", 64))
			},
			malformed: map[string]func(http.Header){
				"missing header": func(h http.Header) { h.Del("X-Hub-Signature-256") },
				"empty header":   func(h http.Header) { h.Set("X-Hub-Signature-256", "") },
				"bad hex":        func(h http.Header) { h.Set("X-Hub-Signature-256", "sha256="+strings.Repeat("zz", 32)) },
				"wrong prefix": func(h http.Header) {
					h.Set("X-Hub-Signature-256", strings.Replace(h.Get("X-Hub-Signature-256"), "sha256=", "sha1=", 1))
				},
				"no prefix": func(h http.Header) {
					h.Set("X-Hub-Signature-256", strings.TrimPrefix(h.Get("X-Hub-Signature-256"), "sha256="))
				},
				"truncated": func(h http.Header) { cut(h, "X-Hub-Signature-256", 2) },
				"legacy SHA-1 only": func(h http.Header) {
					h.Del("X-Hub-Signature-256")
					h.Set("X-Hub-Signature", "sha1="+strings.Repeat("0", 40))
				},
			},
		},
		{
			name:       "shopify",
			secrets:    [2]string{"shpss_secret_a", "shpss_secret_b"},
			verifier:   func(s ...string) wharf.Verifier { return wharf.Shopify(s...) },
			withLookup: func(l wharf.SecretLookup) wharf.Verifier { v := wharf.Shopify(); v.Lookup = l; return v },
			sign:       func(secret string, _ time.Time, body []byte) http.Header { return wharf.SignShopify(secret, body) },
			addSignature: func(h http.Header) {
				h.Add("X-Shopify-Hmac-Sha256", base64.StdEncoding.EncodeToString(zeros32))
				h.Set("X-Shopify-Hmac-Sha256", base64.StdEncoding.EncodeToString(zeros32)+","+h.Get("X-Shopify-Hmac-Sha256"))
			},
			malformed: map[string]func(http.Header){
				"missing header": func(h http.Header) { h.Del("X-Shopify-Hmac-Sha256") },
				"empty header":   func(h http.Header) { h.Set("X-Shopify-Hmac-Sha256", "") },
				"bad base64":     func(h http.Header) { h.Set("X-Shopify-Hmac-Sha256", "%%%not-base64%%%") },
				"hex not base64": func(h http.Header) { h.Set("X-Shopify-Hmac-Sha256", strings.Repeat("ab", 32)) },
				"with a prefix":  func(h http.Header) { h.Set("X-Shopify-Hmac-Sha256", "sha256="+h.Get("X-Shopify-Hmac-Sha256")) },
				"truncated":      func(h http.Header) { cut(h, "X-Shopify-Hmac-Sha256", 4) },
			},
		},
		{
			name:        "slack",
			secrets:     [2]string{"slack-signing-secret-a", "slack-signing-secret-b"},
			timestamped: true,
			verifier:    func(s ...string) wharf.Verifier { return clocked(wharf.Slack(s...)) },
			withLookup: func(l wharf.SecretLookup) wharf.Verifier {
				v := clocked(wharf.Slack())
				v.Lookup = l
				return v
			},
			sign: wharf.SignSlack,
			addSignature: func(h http.Header) {
				h.Add("X-Slack-Signature", "v0="+strings.Repeat("0", 64))
				h.Set("X-Slack-Signature", "v0="+strings.Repeat("1", 64)+","+h.Get("X-Slack-Signature"))
			},
			malformed: map[string]func(http.Header){
				"missing signature": func(h http.Header) { h.Del("X-Slack-Signature") },
				"empty signature":   func(h http.Header) { h.Set("X-Slack-Signature", "") },
				"bad hex":           func(h http.Header) { h.Set("X-Slack-Signature", "v0="+strings.Repeat("zz", 32)) },
				"wrong version": func(h http.Header) {
					h.Set("X-Slack-Signature", strings.Replace(h.Get("X-Slack-Signature"), "v0=", "v1=", 1))
				},
				"truncated":             func(h http.Header) { cut(h, "X-Slack-Signature", 2) },
				"missing timestamp":     func(h http.Header) { h.Del("X-Slack-Request-Timestamp") },
				"non-numeric timestamp": func(h http.Header) { h.Set("X-Slack-Request-Timestamp", "now") },
				"other timestamp":       func(h http.Header) { h.Set("X-Slack-Request-Timestamp", "1700000001") },
			},
		},
		{
			name:        "hmac",
			secrets:     [2]string{"generic-secret-a", "generic-secret-b"},
			timestamped: true,
			verifier:    func(s ...string) wharf.Verifier { return clocked(genericHMAC(s...)) },
			withLookup: func(l wharf.SecretLookup) wharf.Verifier {
				v := clocked(genericHMAC())
				v.Lookup = l
				return v
			},
			sign: func(secret string, ts time.Time, body []byte) http.Header {
				return wharf.SignHMAC(genericHMAC(), secret, ts, body)
			},
			addSignature: func(h http.Header) {
				bogus := "sha512=" + base64.StdEncoding.EncodeToString(make([]byte, 64))
				h.Set("X-Signature", bogus+" "+h.Get("X-Signature"))
				h.Add("X-Signature", bogus)
			},
			malformed: map[string]func(http.Header){
				"missing signature": func(h http.Header) { h.Del("X-Signature") },
				"empty signature":   func(h http.Header) { h.Set("X-Signature", "") },
				"bad base64":        func(h http.Header) { h.Set("X-Signature", "sha512=***") },
				"wrong prefix": func(h http.Header) {
					h.Set("X-Signature", strings.Replace(h.Get("X-Signature"), "sha512=", "sha256=", 1))
				},
				"truncated":             func(h http.Header) { cut(h, "X-Signature", 4) },
				"missing timestamp":     func(h http.Header) { h.Del("X-Timestamp") },
				"non-numeric timestamp": func(h http.Header) { h.Set("X-Timestamp", "yesterday") },
			},
		},
	}
}

// TestVerifiersCommon runs the cases every verifier must pass.
func TestVerifiersCommon(t *testing.T) {
	t.Parallel()
	for _, p := range providers() {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			a, b := p.secrets[0], p.secrets[1]
			body := bytes.Clone(body1K)
			signed := func() http.Header { return p.sign(a, fixedNow, body) }

			requireInvalid := func(t *testing.T, err error) {
				t.Helper()
				require.ErrorIs(t, err, wharf.ErrInvalidSignature)
				var se *wharf.SignatureError
				require.ErrorAs(t, err, &se)
				require.Equal(t, p.name, se.Provider)
				require.Contains(t, err.Error(), "wharf: invalid signature: "+p.name+": ")
				t.Log(err)
			}

			t.Run("valid", func(t *testing.T) {
				require.NoError(t, p.verifier(a).Verify(ctx, signed(), body))
				require.NoError(t, wharf.Validate(p.verifier(a)))
			})
			t.Run("wrong secret", func(t *testing.T) {
				requireInvalid(t, p.verifier(b).Verify(ctx, signed(), body))
			})
			t.Run("tampered body", func(t *testing.T) {
				h := signed()
				for _, i := range []int{0, len(body) / 2, len(body) - 1} {
					tampered := bytes.Clone(body)
					tampered[i] ^= 0x01
					requireInvalid(t, p.verifier(a).Verify(ctx, h, tampered))
				}
				requireInvalid(t, p.verifier(a).Verify(ctx, h, body[:len(body)-1]))
				requireInvalid(t, p.verifier(a).Verify(ctx, h, append(bytes.Clone(body), ' ')))
				requireInvalid(t, p.verifier(a).Verify(ctx, h, nil))
			})
			t.Run("empty body", func(t *testing.T) {
				require.NoError(t, p.verifier(a).Verify(ctx, p.sign(a, fixedNow, nil), nil))
				require.NoError(t, p.verifier(a).Verify(ctx, p.sign(a, fixedNow, []byte{}), nil))
			})
			if p.timestamped {
				tol := wharf.DefaultTolerance
				for _, c := range []struct {
					name string
					ts   time.Time
					ok   bool
				}{
					{"stale just outside", fixedNow.Add(-tol - time.Second), false},
					{"stale just inside", fixedNow.Add(-tol), true},
					{"future just outside", fixedNow.Add(tol + time.Second), false},
					{"future just inside", fixedNow.Add(tol), true},
					{"very old", time.Unix(1, 0), false},
					{"far future", time.Unix(999_999_999_999, 0), false},
				} {
					t.Run(c.name, func(t *testing.T) {
						err := p.verifier(a).Verify(ctx, p.sign(a, c.ts, body), body)
						if c.ok {
							require.NoError(t, err)
							return
						}
						requireInvalid(t, err)
						require.Contains(t, err.Error(), "tolerance")
					})
				}
			}
			for name, breakIt := range p.malformed {
				t.Run("malformed/"+name, func(t *testing.T) {
					h := signed()
					breakIt(h)
					requireInvalid(t, p.verifier(a).Verify(ctx, h, body))
				})
			}
			t.Run("several signatures, one valid", func(t *testing.T) {
				h := signed()
				p.addSignature(h)
				require.NoError(t, p.verifier(a).Verify(ctx, h, body))
				requireInvalid(t, p.verifier(b).Verify(ctx, h, body))
			})
			t.Run("too many signatures", func(t *testing.T) {
				h := signed()
				for range 40 {
					p.addSignature(h)
				}
				requireInvalid(t, p.verifier(a).Verify(ctx, h, body))
			})
			t.Run("rotation", func(t *testing.T) {
				require.NoError(t, p.verifier(a, b).Verify(ctx, p.sign(b, fixedNow, body), body), "second secret")
				require.NoError(t, p.verifier(a, b).Verify(ctx, p.sign(a, fixedNow, body), body), "first secret")
				require.NoError(t, p.verifier(b, a).Verify(ctx, p.sign(a, fixedNow, body), body), "order does not matter")
			})
			t.Run("lookup", func(t *testing.T) {
				h := signed()
				h.Set("X-Tenant", "acme")
				var calls int
				v := p.withLookup(func(ctx context.Context, header http.Header, got []byte) ([]string, error) {
					calls++
					require.Equal(t, "acme", header.Get("X-Tenant"))
					require.Equal(t, body, got)
					return []string{b, a}, nil
				})
				require.NoError(t, v.Verify(ctx, h, body))
				require.Equal(t, 1, calls)
				require.NoError(t, wharf.Validate(v))

				// A request without a signature never reaches the lookup.
				h.Del("X-Tenant")
				requireInvalid(t, v.Verify(ctx, http.Header{}, body))
				require.Equal(t, 1, calls)
			})
			t.Run("lookup failure is not a bad signature", func(t *testing.T) {
				down := errors.New("tenant database is down")
				v := p.withLookup(func(context.Context, http.Header, []byte) ([]string, error) { return nil, down })
				err := v.Verify(ctx, signed(), body)
				require.ErrorIs(t, err, down)
				require.NotErrorIs(t, err, wharf.ErrInvalidSignature)
				require.NotErrorIs(t, err, wharf.ErrInvalidSource)
			})
			t.Run("lookup may refuse a request", func(t *testing.T) {
				v := p.withLookup(func(context.Context, http.Header, []byte) ([]string, error) {
					return nil, fmt.Errorf("%w: unknown tenant", wharf.ErrInvalidSignature)
				})
				require.ErrorIs(t, v.Verify(ctx, signed(), body), wharf.ErrInvalidSignature)
			})
			t.Run("lookup without secrets", func(t *testing.T) {
				v := p.withLookup(func(context.Context, http.Header, []byte) ([]string, error) { return nil, nil })
				requireInvalid(t, v.Verify(ctx, signed(), body))
			})
			t.Run("lookup with an empty secret", func(t *testing.T) {
				v := p.withLookup(func(context.Context, http.Header, []byte) ([]string, error) { return []string{a, ""}, nil })
				require.ErrorIs(t, v.Verify(ctx, p.sign(b, fixedNow, body), body), wharf.ErrInvalidSource)
			})
			t.Run("misconfigured", func(t *testing.T) {
				for name, v := range map[string]wharf.Verifier{
					"no secret":    p.verifier(),
					"empty secret": p.verifier(a, ""),
				} {
					require.ErrorIs(t, v.Verify(ctx, signed(), body), wharf.ErrInvalidSource, name)
					require.ErrorIs(t, wharf.Validate(v), wharf.ErrInvalidSource, name)
				}
			})
			t.Run("concurrent use", func(t *testing.T) {
				v := p.verifier(a, b)
				h := signed()
				done := make(chan error)
				for range 8 {
					go func() {
						var err error
						for range 50 {
							if err = v.Verify(ctx, h, body); err != nil {
								break
							}
						}
						done <- err
					}()
				}
				for range 8 {
					require.NoError(t, <-done)
				}
			})
		})
	}
}

func TestVerifierTolerance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	body := []byte(`{"id":"evt_1","type":"x"}`)

	v := clocked(wharf.Stripe("whsec_x"))
	v.Tolerance = 10 * time.Second
	require.NoError(t, v.Verify(ctx, wharf.SignStripe("whsec_x", fixedNow.Add(-10*time.Second), body), body))
	require.ErrorIs(t, v.Verify(ctx, wharf.SignStripe("whsec_x", fixedNow.Add(-11*time.Second), body), body), wharf.ErrInvalidSignature)
	require.ErrorIs(t, v.Verify(ctx, wharf.SignStripe("whsec_x", fixedNow.Add(11*time.Second), body), body), wharf.ErrInvalidSignature)

	// A clock that moved on: the same request is stale later.
	h := wharf.SignStripe("whsec_x", fixedNow, body)
	wharf.SetClock(v, at(fixedNow.Add(time.Hour)))
	err := v.Verify(ctx, h, body)
	require.ErrorIs(t, err, wharf.ErrInvalidSignature)
	require.Contains(t, err.Error(), "1h0m0s old")

	v.Tolerance = -time.Second
	require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSource)
	require.ErrorIs(t, wharf.Validate(v), wharf.ErrInvalidSource)
}

// TestVerifierHugeSignatureHeaderAllocatesLittle: a signature header of
// 1 MiB, which net/http lets through to the handler unauthenticated, costs
// each verifier a bounded allocation whatever it holds. The header used to
// be split into one string per separator before the candidates were
// counted, so a megabyte of commas, or of one-letter candidates, allocated
// 8 to 26 MiB per request. A genuine signature after empty entries is
// still found; a flood of candidates is refused. Not parallel: the
// allocations are counted across every goroutine.
func TestVerifierHugeSignatureHeaderAllocatesLittle(t *testing.T) {
	ctx := context.Background()
	body := []byte(`{"id":"evt_1","type":"x"}`)
	const size = 1 << 20
	pad := func(unit string) string { return strings.Repeat(unit, size/len(unit)) }
	byName := map[string]provider{}
	for _, p := range providers() {
		byName[p.name] = p
	}
	for _, c := range []struct {
		provider, header string
		value            func(genuine string) string
		accepted         bool
	}{
		{"standard webhooks", "Webhook-Signature", func(g string) string { return pad(" ") + g }, true},
		{"standard webhooks", "Webhook-Signature", func(g string) string { return g + pad(" x") }, false},
		{"stripe", "Stripe-Signature", func(g string) string { return pad(",") + g }, true},
		{"stripe", "Stripe-Signature", func(g string) string { return g + pad(",v1=") }, false},
		{"github", "X-Hub-Signature-256", func(g string) string { return pad(",") + g }, true},
		{"github", "X-Hub-Signature-256", func(g string) string { return g + pad(",x") }, false},
		{"shopify", "X-Shopify-Hmac-Sha256", func(g string) string { return pad(",") + g }, true},
		{"shopify", "X-Shopify-Hmac-Sha256", func(g string) string { return g + pad(",x") }, false},
		{"slack", "X-Slack-Signature", func(g string) string { return pad(",") + g }, true},
		{"slack", "X-Slack-Signature", func(g string) string { return g + pad(",x") }, false},
		{"hmac", "X-Signature", func(g string) string { return pad(" ") + g }, true},
		{"hmac", "X-Signature", func(g string) string { return g + pad(" x") }, false},
	} {
		p := byName[c.provider]
		v := p.verifier(p.secrets[0])
		h := p.sign(p.secrets[0], fixedNow, body)
		h.Set(c.header, c.value(h.Get(c.header)))

		const runs = 4
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			err := v.Verify(ctx, h, body)
			if c.accepted {
				require.NoError(t, err, c.provider)
			} else {
				require.ErrorIs(t, err, wharf.ErrInvalidSignature, c.provider)
			}
		}
		runtime.ReadMemStats(&after)
		perCall := (after.TotalAlloc - before.TotalAlloc) / runs
		require.Less(t, perCall, uint64(64<<10), "%s: %s of %d bytes allocated %d bytes per Verify", c.provider, c.header, size, perCall)
	}
}

// FuzzVerify feeds arbitrary header values and bodies to every verifier:
// none may panic, and none may accept a request unless its signature is
// the genuine one for that body, which only the seeds provide.
func FuzzVerify(f *testing.F) {
	ps := providers()
	for i, p := range ps {
		good := p.sign(p.secrets[0], fixedNow, body1K[:100])
		for name, values := range good {
			f.Add(uint8(i), name, values[0], "1700000000", body1K[:100], []byte("other body"))
		}
		f.Add(uint8(i), "", "", "", []byte{}, []byte{})
		f.Add(uint8(i), "Webhook-Signature", "v1,"+strings.Repeat("A", 44)+" v1,", "-1", []byte("\x00\xff"), []byte("{}"))
		f.Add(uint8(i), "Stripe-Signature", "t=1700000000,v1=,v1==,=,,t", "99999999999999999999", []byte("{"), []byte("}"))
	}
	f.Fuzz(func(t *testing.T, which uint8, name, value, ts string, body, other []byte) {
		p := ps[int(which)%len(ps)]
		secret := p.secrets[0]
		v := p.verifier(secret)
		ctx := context.Background()

		// Arbitrary headers: the fuzzed value under the fuzzed name and
		// under every header the provider reads, plus a fuzzed timestamp.
		genuine := p.sign(secret, fixedNow, body)
		h := http.Header{}
		for k, vals := range genuine {
			h[k] = append([]string(nil), vals...)
		}
		if name != "" {
			h.Set(name, value)
		}
		for _, k := range []string{"Webhook-Timestamp", "X-Slack-Request-Timestamp", "X-Timestamp"} {
			if h.Get(k) != "" && ts != "1700000000" {
				h.Set(k, ts)
			}
		}
		err := v.Verify(ctx, h, body)
		switch {
		case err == nil:
			// Accepted: then it was the secret that made the difference,
			// never a parsing shortcut: the same request fails under
			// another secret (the fuzzer cannot forge an HMAC).
			if err := p.verifier(p.secrets[1]).Verify(ctx, h, body); err == nil {
				t.Fatalf("%s accepted headers %v for body %q under two different secrets", p.name, h, body)
			}
		case !errors.Is(err, wharf.ErrInvalidSignature):
			t.Fatalf("%s: unexpected error class: %v", p.name, err)
		}

		// A body it did not sign is never accepted with the genuine headers.
		if !bytes.Equal(body, other) {
			if err := v.Verify(ctx, genuine, other); err == nil {
				t.Fatalf("%s accepted body %q signed for %q", p.name, other, body)
			}
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	for _, p := range providers() {
		b.Run(strings.ReplaceAll(p.name, " ", "_"), func(b *testing.B) {
			v := p.verifier(p.secrets[0])
			h := p.sign(p.secrets[0], fixedNow, body1K)
			b.SetBytes(int64(len(body1K)))
			b.ReportAllocs()
			for b.Loop() {
				if err := v.Verify(ctx, h, body1K); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
