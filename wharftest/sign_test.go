package wharftest_test

import (
	"crypto/sha512"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/wharftest"
)

// hmacVerifier is a generic HMAC scheme with every option that changes
// the signature: hash, prefix, encoding and a signed timestamp.
func hmacVerifier(secret string) *wharf.HMACVerifier {
	v := wharf.HMAC("X-Signature", secret)
	v.Hash = sha512.New
	v.Prefix = "sha512="
	v.Encoding = wharf.Base64Encoding
	v.TimestampHeader = "X-Timestamp"
	return v
}

func TestSignersPassTheirVerifiers(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	for name, v := range map[string]wharf.Verifier{
		"stripe":  wharf.Stripe("whsec_stripe_test"),
		"github":  wharf.GitHub("github-secret"),
		"shopify": wharf.Shopify("shopify-secret"),
		"slack":   wharf.Slack("slack-secret"),
	} {
		require.NoError(t, p.Source(name, v))
	}
	require.NoError(t, p.Source("hmac", hmacVerifier("hmac-secret"),
		wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromJSON("type")}))
	for _, tc := range []struct {
		source      string
		signer      wharftest.Signer
		wrongSecret wharftest.Signer
		wantID      string // the id wharf stores for the webhook {ID: "evt_<source>"}
		signsTime   bool
	}{
		{"acme", wharftest.StandardWebhooks(swSecret), wharftest.StandardWebhooks("whsec_" + "b3RoZXItc2VjcmV0LTAxMjM0NTY3ODk="), "evt_acme", true},
		{"stripe", wharftest.Stripe("whsec_stripe_test"), wharftest.Stripe("whsec_other"), "evt_stripe", true},
		{"github", wharftest.GitHub("github-secret"), wharftest.GitHub("other"), "evt_github", false},
		{"shopify", wharftest.Shopify("shopify-secret"), wharftest.Shopify("other"), "thing.happened:evt_shopify", false},
		{"slack", wharftest.Slack("slack-secret"), wharftest.Slack("other"), "evt_slack", true},
		{"hmac", wharftest.HMAC(hmacVerifier("unused"), "hmac-secret"), wharftest.HMAC(hmacVerifier("unused"), "other"), "evt_hmac", true},
	} {
		t.Run(tc.source, func(t *testing.T) {
			t.Parallel()
			h := wharftest.New(t, pool, p) // one per subtest: it reports to t
			url := h.URL(tc.source)
			d := tc.signer.Sign(t, wharftest.Webhook{ID: "evt_" + tc.source, Type: "thing.happened"})
			require.Equal(t, tc.wantID, d.EventID)

			res := d.Send(t, url)
			require.Equal(t, http.StatusAccepted, res.StatusCode, res.Body)
			require.Equal(t, tc.wantID, res.EventID)
			st := h.Status(tc.source, tc.wantID)
			require.True(t, st.Queued, "stored under the id the Delivery announced: %s", st)

			again := d.Send(t, url)
			require.Equal(t, http.StatusOK, again.StatusCode, "the same delivery again is a provider's retry")
			require.Equal(t, "duplicate\n", again.Body)

			bad := tc.wrongSecret.Send(t, url, wharftest.Webhook{ID: "evt_forged", Type: "thing.happened"})
			require.Equal(t, http.StatusUnauthorized, bad.StatusCode)
			require.Equal(t, "invalid signature\n", bad.Body)

			if tc.signsTime {
				stale := tc.signer.Send(t, url, wharftest.Webhook{ID: "evt_stale", Type: "thing.happened", Time: time.Now().Add(-time.Hour)})
				require.Equal(t, http.StatusUnauthorized, stale.StatusCode, "Webhook.Time is the signed time")
			}

			fresh := tc.signer.Send(t, url, wharftest.Webhook{Type: "thing.happened"})
			require.Equal(t, http.StatusAccepted, fresh.StatusCode, "a Webhook without an ID gets a new one")
			require.NotEqual(t, tc.wantID, fresh.EventID)
			require.True(t, h.Status(tc.source, fresh.EventID).Queued)
		})
	}
}

func TestSignKeepsAGivenBody(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	require.NoError(t, p.Source("stripe", wharf.Stripe("whsec_stripe_test")))
	h := wharftest.New(t, pool, p)

	body := []byte(`{"id":"evt_from_body","type":"invoice.paid","data":{"object":{"amount_paid":1250}}}`)
	d := wharftest.Stripe("whsec_stripe_test").Sign(t, wharftest.Webhook{ID: "ignored", Type: "ignored", Body: body})
	require.Equal(t, body, d.Body, "sent verbatim")
	require.Equal(t, "evt_from_body", d.EventID, "the id is the body's, as wharf reads it")
	require.Equal(t, http.StatusAccepted, d.Send(t, h.URL("stripe")).StatusCode)

	var stored []byte
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT body FROM wharf.queue_payloads WHERE source = 'stripe' AND event_id = 'evt_from_body'`).Scan(&stored))
	require.Equal(t, body, stored)
}

func TestDefaultBodiesHaveTheProvidersShape(t *testing.T) {
	t.Parallel()
	decode := func(d wharftest.Delivery) map[string]any {
		var m map[string]any
		require.NoError(t, json.Unmarshal(d.Body, &m))
		return m
	}
	w := wharftest.Webhook{ID: "evt_1", Type: "invoice.paid"}

	sw := wharftest.StandardWebhooks(swSecret).Sign(t, w)
	require.Equal(t, map[string]any{"type": "invoice.paid", "data": map[string]any{}}, decode(sw))
	require.Equal(t, "evt_1", sw.Header.Get("webhook-id"))
	require.Equal(t, "application/json", sw.Header.Get("Content-Type"))

	stripe := decode(wharftest.Stripe("s").Sign(t, w))
	require.Equal(t, "evt_1", stripe["id"])
	require.Equal(t, "invoice.paid", stripe["type"])
	require.Equal(t, "event", stripe["object"])

	gh := wharftest.GitHub("s").Sign(t, w)
	require.Equal(t, "evt_1", gh.Header.Get("X-GitHub-Delivery"))
	require.Equal(t, "invoice.paid", gh.Header.Get("X-GitHub-Event"))

	shop := wharftest.Shopify("s").Sign(t, w)
	require.Equal(t, "invoice.paid", shop.Header.Get("X-Shopify-Topic"))
	require.Equal(t, "evt_1", shop.Header.Get("X-Shopify-Event-Id"))

	slack := decode(wharftest.Slack("s").Sign(t, w))
	require.Equal(t, "event_callback", slack["type"])
	require.Equal(t, "evt_1", slack["event_id"])
	require.Equal(t, map[string]any{"type": "invoice.paid"}, slack["event"])

	form := wharftest.Slack("s").Sign(t, wharftest.Webhook{Body: []byte("command=%2Fdeploy&trigger_id=123.456")})
	require.Equal(t, "application/x-www-form-urlencoded", form.Header.Get("Content-Type"))
	require.Equal(t, "123.456", form.EventID, "a slash command's id is its trigger_id")
}

func TestDeliveryRequestServesAHandlerDirectly(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	d := wharftest.StandardWebhooks(swSecret).Sign(t, wharftest.Webhook{ID: "evt_direct", Type: "order.paid"})

	rec := httptest.NewRecorder()
	p.Handler("acme").ServeHTTP(rec, d.Request(t, "/webhooks/acme"))
	require.Equal(t, http.StatusAccepted, rec.Code, rec.Body.String())
	require.True(t, wharftest.New(t, pool, p).Status("acme", "evt_direct").Queued)

	// Webhook.Header overrides what the Signer set: here, a broken
	// signature.
	broken := wharftest.StandardWebhooks(swSecret).Sign(t, wharftest.Webhook{
		ID: "evt_broken", Type: "order.paid",
		Header: http.Header{"webhook-signature": {"v1,AAAA"}},
	})
	require.Equal(t, []string{"v1,AAAA"}, broken.Header.Values("Webhook-Signature"))
	rec = httptest.NewRecorder()
	p.Handler("acme").ServeHTTP(rec, broken.Request(t, "/webhooks/acme"))
	require.Equal(t, http.StatusUnauthorized, rec.Code)
}

func TestSignFailsTheTestOnUnusableInput(t *testing.T) {
	t.Parallel()
	msg := mustFail(t, func(tb testing.TB) {
		wharftest.StandardWebhooks(swSecret).Sign(tb, wharftest.Webhook{ID: "x"})
	})
	require.Contains(t, msg, "needs a Type")

	msg = mustFail(t, func(tb testing.TB) {
		wharftest.StandardWebhooks("whsec_not base64!").Sign(tb, wharftest.Webhook{Type: "x"})
	})
	require.Contains(t, msg, "wharftest: sign:")

	msg = mustFail(t, func(tb testing.TB) {
		wharftest.Signer{}.Sign(tb, wharftest.Webhook{Type: "x"})
	})
	require.Contains(t, msg, "zero Signer")
}

// TestSignersPassSourcesWithNonDefaultFields: a request signed by
// wharftest is accepted by a source configured away from the defaults:
// an HMAC scheme whose signed content covers an id header, one whose
// timestamps are in milliseconds, and a GitHub source reading the JSON of
// a form-encoded webhook.
func TestSignersPassSourcesWithNonDefaultFields(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})

	// "<id>.<ts>.<body>", the id from a header: a scheme that signs its
	// id so that a captured body cannot be sent again under a new one.
	signsID := wharf.HMAC("X-Signature", "hmac-secret")
	signsID.TimestampHeader = "X-Timestamp"
	signsID.SignedContent = func(ts string, h http.Header, body []byte) []byte {
		return append([]byte(h.Get("X-Event-Id")+"."+ts+"."), body...)
	}
	require.NoError(t, p.Source("signs-id", signsID, wharf.SourceFields{ID: wharf.FromHeader("X-Event-Id"), Type: wharf.FromJSON("type")}))

	millis := wharf.HMAC("X-Signature", "hmac-secret")
	millis.TimestampHeader = "X-Timestamp"
	millis.ParseTimestamp = func(s string) (time.Time, error) {
		ms, err := strconv.ParseInt(s, 10, 64)
		return time.UnixMilli(ms), err
	}
	require.NoError(t, p.Source("millis", millis, wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromJSON("type")}))

	require.NoError(t, p.Source("github-form", wharf.GitHub("github-secret"),
		wharf.SourceFields{OrderingKey: wharf.FromJSON("repository.full_name")}))

	for _, tc := range []struct {
		source string
		signer wharftest.Signer
		w      wharftest.Webhook
	}{
		{"signs-id", wharftest.HMAC(signsID, "hmac-secret"), wharftest.Webhook{
			ID: "evt_signed_id", Type: "order.paid", Header: http.Header{"X-Event-Id": {"evt_signed_id"}},
		}},
		{"millis", wharftest.HMAC(millis, "hmac-secret"), wharftest.Webhook{
			ID: "evt_millis", Type: "order.paid",
			Header: http.Header{"X-Timestamp": {strconv.FormatInt(time.Now().UnixMilli(), 10)}},
		}},
		{"github-form", wharftest.GitHub("github-secret"), wharftest.Webhook{
			ID: "evt_github_form", Type: "pull_request",
			Body: []byte(url.Values{"payload": {`{"action":"opened","repository":{"full_name":"acme/api"}}`}}.Encode()),
		}},
	} {
		t.Run(tc.source, func(t *testing.T) {
			h := wharftest.New(t, pool, p) // one per subtest: it reports to t
			res := h.Send(tc.source, tc.signer, tc.w)
			require.Equal(t, http.StatusAccepted, res.StatusCode, res.Body)
			require.True(t, h.Status(tc.source, tc.w.ID).Queued)
		})
	}
	var key string
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT ordering_key FROM wharf.queue WHERE event_id = 'evt_github_form'`).Scan(&key))
	require.Equal(t, "acme/api", key, "read from the form's payload")

	// The signature still covers what it covers: the id header changed
	// after signing is refused.
	h := wharftest.New(t, pool, p)
	d := wharftest.HMAC(signsID, "hmac-secret").Sign(t, wharftest.Webhook{ID: "evt_a", Type: "order.paid", Header: http.Header{"X-Event-Id": {"evt_a"}}})
	d.Header.Set("X-Event-Id", "evt_b")
	require.Equal(t, http.StatusUnauthorized, d.Send(t, h.URL("signs-id")).StatusCode)
}
