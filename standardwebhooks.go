package wharf

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// swHeaders names the three headers of one family: the specification's
// own (https://www.standardwebhooks.com), or Svix's, which Svix and the
// providers built on it send unless an account has white-labelled them.
type swHeaders struct{ id, timestamp, signature string }

var (
	swStandardHeaders = swHeaders{"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"}
	swSvixHeaders     = swHeaders{"Svix-Id", "Svix-Timestamp", "Svix-Signature"}
)

// swHeadersOf returns the family a request is read from: Svix's when it
// carries svix-signature and no webhook-signature, else the
// specification's. All three values come from the one family, so the id
// deduplicated on is the one that was signed.
func swHeadersOf(header http.Header) swHeaders {
	if len(header.Values(swStandardHeaders.signature)) == 0 && len(header.Values(swSvixHeaders.signature)) > 0 {
		return swSvixHeaders
	}
	return swStandardHeaders
}

const standardWebhooksName = "standard webhooks"

// StandardWebhooksVerifier verifies requests signed with the symmetric
// scheme of the Standard Webhooks specification (used by Svix and the many
// providers built on it):
//
//	webhook-id: msg_2KWPBgLlAfxdpx2AI54pPJ85f4W
//	webhook-timestamp: 1674087231
//	webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=
//
// The signature is the base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"
// under the decoded secret. The header may list several signatures
// separated by spaces (the sender signs with an old and a new secret during
// a rotation); one matching v1 signature is enough. Other versions, such as
// the asymmetric v1a, are ignored: a request signed only with them is
// refused. Svix's own header names (svix-id, svix-timestamp,
// svix-signature), which Svix sends unless an account has white-labelled
// them, are read when the request has no webhook-signature header; the
// two families are never mixed.
//
// Its default identity (see Identify): the id is the webhook-id (or
// svix-id) header, the type is the body's top-level "type" member, and
// there is no ordering key. The id is covered by the signature.
//
// A StandardWebhooksVerifier is safe for concurrent use; do not change its
// fields while it is in use.
type StandardWebhooksVerifier struct {
	// Secrets are the endpoint's signing secrets, "whsec_" followed by the
	// key in base64, as the specification serializes them; the base64 key
	// alone, without the prefix, is accepted too, as the reference
	// libraries do. A request signed with any of them is accepted (keep the
	// old one here during a rotation).
	Secrets []string

	// Lookup, when set, replaces Secrets: it returns the secrets for each
	// request (see SecretLookup).
	Lookup SecretLookup

	// Tolerance is how far webhook-timestamp may be from this process's
	// clock, in the past or in the future. Defaults to 5 minutes
	// (DefaultTolerance), the specification's recommendation.
	Tolerance time.Duration

	now func() time.Time // for tests; defaults to time.Now
}

// StandardWebhooks returns a verifier for the Standard Webhooks scheme
// with the given secrets ("whsec_..."); give several during a rotation.
func StandardWebhooks(secrets ...string) *StandardWebhooksVerifier {
	return &StandardWebhooksVerifier{Secrets: append([]string(nil), secrets...)}
}

// Verify checks the request's webhook-signature against the body, the
// webhook-id and the webhook-timestamp, which must be within Tolerance of
// now. Errors wrap ErrInvalidSignature, except those of the secret lookup
// and of a misconfigured verifier (ErrInvalidSource); see Verifier.
func (v *StandardWebhooksVerifier) Verify(ctx context.Context, header http.Header, body []byte) error {
	const p = standardWebhooksName
	if err := v.validate(); err != nil {
		return err
	}
	names := swHeadersOf(header)
	id := header.Get(names.id)
	if id == "" {
		return invalidSignature(p, "header %s is missing", names.id)
	}
	ts := header.Get(names.timestamp)
	if err := checkUnixTimestamp(p, names.timestamp, ts, clockNow(v.now), toleranceOrDefault(v.Tolerance)); err != nil {
		return err
	}
	sigs, err := parseSignatures(p, names.signature, header.Values(names.signature), strings.FieldsSeq, "v1,", base64Signature, sha256.Size)
	if err != nil {
		return err
	}
	secrets, err := resolveSecrets(ctx, p, v.Secrets, v.Lookup, header, body)
	if err != nil {
		return err
	}
	// Every secret is decoded before any is tried, so that a bad one from
	// the lookup fails the request whatever its place in the list.
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		if keys[i], err = standardWebhooksKey(s); err != nil {
			if v.Lookup != nil {
				err = fmt.Errorf("%w (returned by the secret lookup)", err)
			}
			return err
		}
	}
	prefix := []byte(id + "." + ts + ".")
	for _, key := range keys {
		if anyMACMatches(macOf(sha256.New, key, prefix, body), sigs) {
			return nil
		}
	}
	return invalidSignature(p, "no v1 signature matches (%d given, %d secrets tried)", len(sigs), len(secrets))
}

// standardWebhooksKey decodes a "whsec_<base64>" (or bare base64) secret.
func standardWebhooksKey(secret string) ([]byte, error) {
	key, ok := decodeBase64(strings.TrimPrefix(secret, "whsec_"))
	if !ok || len(key) == 0 {
		return nil, invalidSource(standardWebhooksName, `a secret is not "whsec_" followed by a base64 key`)
	}
	return key, nil
}

func (v *StandardWebhooksVerifier) validate() error {
	if err := validateSecrets(standardWebhooksName, v.Secrets, v.Lookup); err != nil {
		return err
	}
	for _, s := range v.Secrets {
		if _, err := standardWebhooksKey(s); err != nil {
			return err
		}
	}
	return validateTolerance(standardWebhooksName, v.Tolerance)
}

var swTypePath = mustJSONPath("type")

// Identify returns the default identity of a verified request: id from the
// webhook-id (or svix-id) header, type from the body's "type" member, no ordering key.
// Errors wrap ErrInvalidIdentity.
func (v *StandardWebhooksVerifier) Identify(header http.Header, body []byte) (Identity, error) {
	return identifyDefaults(v, header, body)
}

func (v *StandardWebhooksVerifier) prepareIdentity(r *identityRequest) { r.addPath(swTypePath) }

func (v *StandardWebhooksVerifier) defaultIdentity(r *identityRequest) (id, typ, key fieldValue) {
	name := swHeadersOf(r.header).id
	id = fieldValue{value: r.header.Get(name), from: fmt.Sprintf("header %q", strings.ToLower(name))}
	typ = r.json("type", `JSON "type"`)
	return id, typ, key
}
