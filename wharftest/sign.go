package wharftest

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wharfhq/wharf"
)

// Webhook describes one webhook to sign. Where ID and Type go depends on
// the provider, as wharf's verifiers read them by default:
//
//	StandardWebhooks  ID: webhook-id header         Type: body "type"
//	Stripe            ID: body "id"                 Type: body "type"
//	GitHub            ID: X-GitHub-Delivery header  Type: X-GitHub-Event header
//	Shopify           ID: X-Shopify-Event-Id header Type: X-Shopify-Topic header
//	Slack             ID: body "event_id"           Type: body "event.type"
//	HMAC              ID: body "id"                 Type: body "type" (read with SourceFields)
//
// Header-borne values are always set from ID and Type. Body-borne values
// come from Body when it is given (ID and Type are then ignored), or a
// minimal body of the provider's shape is built from them when Body is
// nil.
type Webhook struct {
	// ID is the provider's event id. Defaults to a random one.
	ID string
	// Type is the event type. Required unless Body is given.
	Type string
	// Body is the raw body. Defaults to a minimal body holding ID and
	// Type, such as {"type":"invoice.paid","data":{}}.
	Body []byte
	// Time is when the provider signed the request, for the schemes that
	// sign a time (Standard Webhooks, Stripe, Slack, HMAC with a
	// TimestampHeader). Defaults to now; set it an hour back to test that
	// a stale signature is refused.
	Time time.Time
	// Header holds further request headers; they override those the
	// Signer sets, so a test can also send a broken signature. An HMAC
	// Signer signs them where its verifier's signed content covers them.
	Header http.Header
}

// Signer signs webhooks the way one provider does, with one secret.
type Signer struct {
	verifier wharf.Verifier
	// identity puts the webhook's id and type where the provider does:
	// into h, or into the default body it returns.
	identity func(w Webhook, h http.Header) (body any)
	// sign returns the signature's headers; sent holds the request's
	// other headers, for the schemes that sign some of them.
	sign func(w Webhook, sent http.Header, body []byte) http.Header
	form bool // bodies that are not JSON are form-encoded (Slack, GitHub)
}

// StandardWebhooks signs like a Standard Webhooks sender (Svix and the
// providers built on it); secret is "whsec_" and a base64 key, as given to
// wharf.StandardWebhooks.
func StandardWebhooks(secret string) Signer {
	return Signer{
		verifier: wharf.StandardWebhooks(secret),
		identity: func(w Webhook, _ http.Header) any {
			return map[string]any{"type": w.Type, "data": map[string]any{}}
		},
		sign: func(w Webhook, _ http.Header, body []byte) http.Header {
			return wharf.SignStandardWebhooks(secret, w.ID, w.Time, body)
		},
	}
}

// Stripe signs like Stripe (Stripe-Signature, the secret used as a literal
// string), as checked by wharf.Stripe.
func Stripe(secret string) Signer {
	return Signer{
		verifier: wharf.Stripe(secret),
		identity: func(w Webhook, _ http.Header) any {
			return map[string]any{"id": w.ID, "object": "event", "type": w.Type, "data": map[string]any{"object": map[string]any{}}}
		},
		sign: func(w Webhook, _ http.Header, body []byte) http.Header {
			return wharf.SignStripe(secret, w.Time, body)
		},
	}
}

// GitHub signs like GitHub (X-Hub-Signature-256) and sets X-GitHub-Delivery
// and X-GitHub-Event, as read by wharf.GitHub. A Body that is not JSON is
// sent form-encoded, as GitHub sends a webhook whose content type is
// application/x-www-form-urlencoded (the JSON in its form field
// "payload", where wharf.FromJSON then reads).
func GitHub(secret string) Signer {
	return Signer{
		verifier: wharf.GitHub(secret),
		identity: func(w Webhook, h http.Header) any {
			h.Set("X-GitHub-Delivery", w.ID)
			h.Set("X-GitHub-Event", w.Type)
			return map[string]any{}
		},
		sign: func(_ Webhook, _ http.Header, body []byte) http.Header {
			return wharf.SignGitHub(secret, body)
		},
		form: true,
	}
}

// Shopify signs like Shopify (X-Shopify-Hmac-Sha256) and sets
// X-Shopify-Topic, X-Shopify-Event-Id and X-Shopify-Webhook-Id, as read by
// wharf.Shopify. wharf stores a Shopify event under "<topic>:<event id>":
// use Response.EventID (or Delivery.EventID) to look it up.
func Shopify(secret string) Signer {
	return Signer{
		verifier: wharf.Shopify(secret),
		identity: func(w Webhook, h http.Header) any {
			h.Set("X-Shopify-Topic", w.Type)
			h.Set("X-Shopify-Event-Id", w.ID)
			h.Set("X-Shopify-Webhook-Id", "whk_"+w.ID)
			return map[string]any{}
		},
		sign: func(_ Webhook, _ http.Header, body []byte) http.Header {
			return wharf.SignShopify(secret, body)
		},
	}
}

// Slack signs like Slack (X-Slack-Signature over the timestamp and body),
// as checked by wharf.Slack. The default body is an Events API
// event_callback whose event_id is ID and whose inner event's type is
// Type. A Body that is not JSON is sent form-encoded, as Slack sends
// interactions and slash commands.
func Slack(secret string) Signer {
	return Signer{
		verifier: wharf.Slack(secret),
		identity: func(w Webhook, _ http.Header) any {
			return map[string]any{"type": "event_callback", "event_id": w.ID, "event": map[string]any{"type": w.Type}}
		},
		sign: func(w Webhook, _ http.Header, body []byte) http.Header {
			return wharf.SignSlack(secret, w.Time, body)
		},
		form: true,
	}
}

// HMAC signs for a generic wharf.HMACVerifier (its header, prefix, hash,
// encoding, timestamp header and signed content) with secret; v's own
// secrets are not used. Such a source reads its id and type where its
// SourceFields say: the default body is {"id": ID, "type": Type}, for
// FromJSON("id") and FromJSON("type"); set Body or Header otherwise.
//
// What is signed is what the request carries: v.SignedContent sees the
// Webhook's Header (an id header it covers, say), and a timestamp header
// set there is the signed text instead of Time in Unix seconds, for a v
// whose ParseTimestamp reads another format.
func HMAC(v *wharf.HMACVerifier, secret string) Signer {
	return Signer{
		verifier: v,
		identity: func(w Webhook, _ http.Header) any {
			return map[string]any{"id": w.ID, "type": w.Type}
		},
		sign: func(w Webhook, sent http.Header, body []byte) http.Header {
			return wharf.SignHMAC(signingAs(v, sent), secret, w.Time, body)
		},
	}
}

// signingAs returns a copy of v whose signed content is computed, as v's
// Verify computes it, from the headers the request will carry: sent, and
// the timestamp header that wharf.SignHMAC sets unless sent has one.
// SignHMAC alone shows SignedContent its own headers only.
func signingAs(v *wharf.HMACVerifier, sent http.Header) *wharf.HMACVerifier {
	signer := *v
	signer.SignedContent = func(ts string, own http.Header, body []byte) []byte {
		all := own.Clone()
		maps.Copy(all, sent)
		if v.TimestampHeader != "" {
			ts = all.Get(v.TimestampHeader)
		}
		return v.Content(ts, all, body)
	}
	return &signer
}

// Delivery is one signed request, ready to send. Send it twice to play a
// provider's retry: the second answer is 200 (a duplicate).
type Delivery struct {
	Header http.Header
	Body   []byte
	// EventID is the id wharf stores the event under with the provider's
	// default identity (for Shopify, "<topic>:<id>"); the Webhook's ID
	// when the provider has no default (HMAC) or the default cannot be
	// read. A source with SourceFields overrides may store another id.
	EventID string
}

// Sign signs w. It fails the test when w has neither a Type nor a Body.
func (s Signer) Sign(t testing.TB, w Webhook) Delivery {
	t.Helper()
	if s.sign == nil {
		t.Fatalf("wharftest: Sign on a zero Signer; use StandardWebhooks, Stripe, GitHub, Shopify, Slack or HMAC")
	}
	if w.ID == "" {
		w.ID = "wt_" + strings.ToLower(rand.Text())
	}
	if w.Time.IsZero() {
		w.Time = time.Now()
	}
	h := http.Header{}
	def := s.identity(w, h)
	body := w.Body
	if body == nil {
		if w.Type == "" {
			t.Fatalf("wharftest: a Webhook needs a Type, or a Body that holds it")
		}
		var err error
		if body, err = json.Marshal(def); err != nil {
			t.Fatalf("wharftest: %v", err)
		}
	}
	switch {
	case json.Valid(body):
		h.Set("Content-Type", "application/json")
	case s.form:
		h.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	own := http.Header{}
	for k, v := range w.Header {
		own[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
	}
	maps.Copy(h, own)
	signed, err := s.signed(w, h, body)
	if err != nil {
		t.Fatalf("wharftest: sign: %v", err)
	}
	for k, v := range signed {
		if _, overridden := own[k]; !overridden {
			h[k] = v
		}
	}
	d := Delivery{Header: h, Body: body, EventID: w.ID}
	if ident, ok := s.verifier.(wharf.Identifier); ok {
		if id, err := ident.Identify(h, body); err == nil {
			d.EventID = id.ID
		}
	}
	return d
}

// signed calls sign, turning the panic of wharf's Sign functions on a
// secret its verifier would refuse into an error.
func (s Signer) signed(w Webhook, sent http.Header, body []byte) (h http.Header, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return s.sign(w, sent, body), nil
}

// Send signs w and POSTs it to url.
func (s Signer) Send(t testing.TB, url string, w Webhook) Response {
	t.Helper()
	return s.Sign(t, w).Send(t, url)
}

// Request returns a POST of d to url, usable with an http.Client or
// directly with a handler:
//
//	rec := httptest.NewRecorder()
//	p.Handler("stripe").ServeHTTP(rec, d.Request(t, "/webhooks/stripe"))
func (d Delivery) Request(t testing.TB, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(d.Body))
	if err != nil {
		t.Fatalf("wharftest: %v", err)
	}
	req.Header = d.Header.Clone()
	return req
}

// Response is a server's answer to a Delivery.
type Response struct {
	StatusCode int    // 202 stored, 200 duplicate, 401, 400, ...
	Body       string // "accepted\n", "duplicate\n", "invalid signature\n", ...
	EventID    string // the Delivery's EventID
}

// client bounds every send: a test must not hang on a server that never
// answers.
var client = &http.Client{Timeout: 30 * time.Second}

// Send POSTs d to url (an absolute URL) and returns the answer. It fails
// the test only when no answer comes.
func (d Delivery) Send(t testing.TB, url string) Response {
	t.Helper()
	resp, err := client.Do(d.Request(t, url))
	if err != nil {
		t.Fatalf("wharftest: send %s to %s: %v", d.EventID, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("wharftest: read the answer to %s from %s: %v", d.EventID, url, err)
	}
	return Response{StatusCode: resp.StatusCode, Body: string(b), EventID: d.EventID}
}
