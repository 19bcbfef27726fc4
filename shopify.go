package wharf

import (
	"context"
	"crypto/sha256"
	"net/http"
)

const (
	shopifyName      = "shopify"
	shopifyHMAC      = "X-Shopify-Hmac-Sha256"
	shopifyEventID   = "X-Shopify-Event-Id"
	shopifyWebhookID = "X-Shopify-Webhook-Id"
	shopifyTopic     = "X-Shopify-Topic"
)

// ShopifyVerifier verifies Shopify webhooks:
//
//	X-Shopify-Hmac-Sha256: B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g=
//
// the base64 HMAC-SHA256 of the body keyed with the app's client secret
// (or, for a webhook created in a store's admin, the secret shown there).
//
// Its default identity (see Identify):
//
//   - The id is X-Shopify-Event-Id when present, else X-Shopify-Webhook-Id.
//     The event id is the same in every webhook Shopify sends for one event
//     (a retry, or one delivery per subscription when several subscriptions
//     of the same topic point at this endpoint), which Shopify documents as
//     the way to detect duplicates; the webhook id differs per
//     subscription, so the same event would be stored once per
//     subscription. The id is prefixed with the topic and a colon
//     ("orders/create:7b8c9d0a-..."), so that should one merchant action
//     give the same event id to webhooks of different topics, none of
//     them is mistaken for a duplicate of another and dropped.
//   - The type is X-Shopify-Topic ("orders/create").
//   - There is no ordering key; FromHeader("X-Shopify-Shop-Domain") runs
//     each store's events in order.
//
// Shopify's scheme signs neither a timestamp nor these headers, only the
// body: whoever captured a delivery could send its body again under new
// ids, and it would be stored as a new event, or under another
// X-Shopify-Topic, and it would reach that topic's handler. Serve the
// endpoint over HTTPS only, and have handlers check the body's shape.
// Shopify's newer Events deliveries (headers without the X- prefix) are
// not covered.
//
// A ShopifyVerifier is safe for concurrent use; do not change its fields
// while it is in use.
type ShopifyVerifier struct {
	// Secrets are the app's client secrets. A request signed with any of
	// them is accepted (keep the old one here during a rotation).
	Secrets []string

	// Lookup, when set, replaces Secrets: it returns the secrets for each
	// request (see SecretLookup), for instance per X-Shopify-Shop-Domain
	// when each store has its own app.
	Lookup SecretLookup
}

// Shopify returns a verifier for Shopify webhooks with the app's client
// secrets; give several during a rotation.
func Shopify(secrets ...string) *ShopifyVerifier {
	return &ShopifyVerifier{Secrets: append([]string(nil), secrets...)}
}

// Verify checks X-Shopify-Hmac-Sha256 against the body. Several signatures
// (repeated headers, or a comma-separated list) are accepted if one
// matches. Errors wrap ErrInvalidSignature, except those of the secret
// lookup and of a misconfigured verifier (ErrInvalidSource); see Verifier.
func (v *ShopifyVerifier) Verify(ctx context.Context, header http.Header, body []byte) error {
	const p = shopifyName
	if err := v.validate(); err != nil {
		return err
	}
	sigs, err := parseSignatures(p, shopifyHMAC, header.Values(shopifyHMAC), splitOn(","), "", base64Signature, sha256.Size)
	if err != nil {
		return err
	}
	secrets, err := resolveSecrets(ctx, p, v.Secrets, v.Lookup, header, body)
	if err != nil {
		return err
	}
	if anySecretMatches(sha256.New, secrets, sigs, body) {
		return nil
	}
	return invalidSignature(p, "no signature matches (%d given, %d secrets tried)", len(sigs), len(secrets))
}

func (v *ShopifyVerifier) validate() error {
	return validateSecrets(shopifyName, v.Secrets, v.Lookup)
}

// Identify returns the default identity of a verified request: id
// "<X-Shopify-Topic>:<X-Shopify-Event-Id>" (or X-Shopify-Webhook-Id
// without an event id), type X-Shopify-Topic, no ordering key. Errors wrap
// ErrInvalidIdentity.
func (v *ShopifyVerifier) Identify(header http.Header, body []byte) (Identity, error) {
	return identifyDefaults(v, header, body)
}

func (v *ShopifyVerifier) prepareIdentity(*identityRequest) {}

func (v *ShopifyVerifier) defaultIdentity(r *identityRequest) (id, typ, key fieldValue) {
	topic := r.header.Get(shopifyTopic)
	typ = fieldValue{value: topic, from: `header "` + shopifyTopic + `"`}

	idHeader := shopifyEventID
	raw := r.header.Get(idHeader)
	if raw == "" {
		idHeader = shopifyWebhookID
		raw = r.header.Get(idHeader)
	}
	id = fieldValue{from: `header "` + shopifyEventID + `" or "` + shopifyWebhookID + `"`}
	switch {
	case raw == "":
		// missing
	case topic == "":
		id.reason = "needs the header " + shopifyTopic + " too"
	default:
		id.value = topic + ":" + raw
		id.from = `header "` + idHeader + `"`
	}
	return id, typ, key
}
