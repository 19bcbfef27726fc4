package wharf

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strings"
	"time"
)

const (
	stripeName   = "stripe"
	stripeHeader = "Stripe-Signature"
)

// StripeVerifier verifies Stripe webhooks:
//
//	Stripe-Signature: t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//
// v1 is the hex HMAC-SHA256 of "<t>.<body>" keyed with the endpoint's
// signing secret used as a literal string ("whsec_..." is not decoded).
// During a secret rotation Stripe sends several v1 entries; one match is
// enough. Other schemes (v0, Stripe's test-mode legacy signature) are
// ignored.
//
// Its default identity (see Identify): the id is the body's "id" member
// (evt_...), the type its "type" member ("invoice.paid"), and there is no
// ordering key. To run one customer's events in order, set
// SourceFields.OrderingKey to FromJSON("data.object.customer").
//
// A StripeVerifier is safe for concurrent use; do not change its fields
// while it is in use.
type StripeVerifier struct {
	// Secrets are the endpoint's signing secrets ("whsec_..."), used as
	// literal strings. A request signed with any of them is accepted (keep
	// the old one here during a rotation).
	Secrets []string

	// Lookup, when set, replaces Secrets: it returns the secrets for each
	// request (see SecretLookup), for instance one per Connect endpoint.
	Lookup SecretLookup

	// Tolerance is how far t may be from this process's clock, in the past
	// or in the future. Defaults to 5 minutes (DefaultTolerance), as in
	// Stripe's libraries (which check the past only).
	Tolerance time.Duration

	now func() time.Time // for tests; defaults to time.Now
}

// Stripe returns a verifier for Stripe webhooks with the endpoint's signing
// secrets ("whsec_..."); give several during a rotation.
func Stripe(secrets ...string) *StripeVerifier {
	return &StripeVerifier{Secrets: append([]string(nil), secrets...)}
}

// Verify checks the Stripe-Signature header against the body: t must be
// within Tolerance of now and one v1 must match. Errors wrap
// ErrInvalidSignature, except those of the secret lookup and of a
// misconfigured verifier (ErrInvalidSource); see Verifier.
func (v *StripeVerifier) Verify(ctx context.Context, header http.Header, body []byte) error {
	const p = stripeName
	if err := v.validate(); err != nil {
		return err
	}
	raw := header.Get(stripeHeader)
	if raw == "" {
		return invalidSignature(p, "header %s is missing", stripeHeader)
	}
	var (
		t      string
		tsSeen bool
		v1     []string
	)
	// The items are cut one at a time and the v1 entries counted as they
	// come, so a megabyte of commas or of "v1=" allocates nothing.
	for item := range strings.SplitSeq(raw, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			if strings.TrimSpace(item) == "" {
				continue
			}
			return invalidSignature(p, "header %s is malformed: %q is not key=value", stripeHeader, truncateForLog(item))
		}
		switch k {
		case "t":
			if tsSeen {
				return invalidSignature(p, "header %s has two timestamps", stripeHeader)
			}
			tsSeen, t = true, val
		case "v1":
			if len(v1) == maxSignatures {
				return invalidSignature(p, "header %s holds more than %d v1 signatures", stripeHeader, maxSignatures)
			}
			v1 = append(v1, val)
		}
	}
	if !tsSeen {
		return invalidSignature(p, "header %s has no timestamp (t=)", stripeHeader)
	}
	if err := checkUnixTimestamp(p, stripeHeader+" t", t, clockNow(v.now), toleranceOrDefault(v.Tolerance)); err != nil {
		return err
	}
	if len(v1) == 0 {
		return invalidSignature(p, "header %s has no v1 signature", stripeHeader)
	}
	sigs, err := parseSignatures(p, stripeHeader+" v1", v1, splitOn(""), "", hexSignature, sha256.Size)
	if err != nil {
		return err
	}
	secrets, err := resolveSecrets(ctx, p, v.Secrets, v.Lookup, header, body)
	if err != nil {
		return err
	}
	prefix := []byte(t + ".")
	if anySecretMatches(sha256.New, secrets, sigs, prefix, body) {
		return nil
	}
	return invalidSignature(p, "no v1 signature matches (%d given, %d secrets tried)", len(sigs), len(secrets))
}

func (v *StripeVerifier) validate() error {
	if err := validateSecrets(stripeName, v.Secrets, v.Lookup); err != nil {
		return err
	}
	return validateTolerance(stripeName, v.Tolerance)
}

var (
	stripeIDPath   = mustJSONPath("id")
	stripeTypePath = mustJSONPath("type")
)

// Identify returns the default identity of a verified request: id and type
// from the body's "id" and "type" members, no ordering key. Errors wrap
// ErrInvalidIdentity.
func (v *StripeVerifier) Identify(header http.Header, body []byte) (Identity, error) {
	return identifyDefaults(v, header, body)
}

func (v *StripeVerifier) prepareIdentity(r *identityRequest) {
	r.addPath(stripeIDPath)
	r.addPath(stripeTypePath)
}

func (v *StripeVerifier) defaultIdentity(r *identityRequest) (id, typ, key fieldValue) {
	return r.json("id", `JSON "id"`), r.json("type", `JSON "type"`), key
}
