package wharf_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// Stripe publishes no fixed test vector, so this one was computed with an
// independent tool, OpenSSL, over the same bytes Stripe signs
// ("<t>.<body>", the secret as a literal string):
//
//	printf '%s' '1700000000.{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1NG8Dt2eZvKYlo2C","customer":"cus_9s6XKzkNRiz8i3"}}}' |
//	  openssl dgst -sha256 -hmac 'whsec_wharfStripeTestVector0123456789'
//	SHA2-256(stdin)= 79bc5f3c010452774abefc991299e2bbc5d9ebe35a432785e99c01762a65dd33
const (
	stripeVectorSecret = "whsec_wharfStripeTestVector0123456789"
	stripeVectorT      = 1700000000
	stripeVectorBody   = `{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1NG8Dt2eZvKYlo2C","customer":"cus_9s6XKzkNRiz8i3"}}}`
	stripeVectorV1     = "79bc5f3c010452774abefc991299e2bbc5d9ebe35a432785e99c01762a65dd33"
)

func stripeVectorHeader(sig string) http.Header {
	h := http.Header{}
	h.Set("Stripe-Signature", sig)
	return h
}

func TestStripeOpenSSLVector(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	body := []byte(stripeVectorBody)
	v := wharf.Stripe(stripeVectorSecret)
	wharf.SetClock(v, at(time.Unix(stripeVectorT, 0)))

	for name, sig := range map[string]string{
		"alone":                       "t=1700000000,v1=" + stripeVectorV1,
		"with a v0 (test mode)":       "t=1700000000,v1=" + stripeVectorV1 + ",v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39",
		"after another v1 (rotation)": "t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v1=" + stripeVectorV1,
		"upper-case hex":              "t=1700000000,v1=79BC5F3C010452774ABEFC991299E2BBC5D9EBE35A432785E99C01762A65DD33",
		"timestamp last, spaces":      "v1=" + stripeVectorV1 + ", t=1700000000",
	} {
		require.NoError(t, v.Verify(ctx, stripeVectorHeader(sig), body), name)
	}

	// The signer reproduces the OpenSSL value.
	require.Equal(t, "t=1700000000,v1="+stripeVectorV1, wharf.SignStripe(stripeVectorSecret, time.Unix(stripeVectorT, 0), body).Get("Stripe-Signature"))

	good := stripeVectorHeader("t=1700000000,v1=" + stripeVectorV1)
	// The secret is a literal string: the same secret decoded, or without
	// its prefix, is another key.
	for _, secret := range []string{"wharfStripeTestVector0123456789", "whsec_wharfStripeTestVector012345678"} {
		other := wharf.Stripe(secret)
		wharf.SetClock(other, at(time.Unix(stripeVectorT, 0)))
		require.ErrorIs(t, other.Verify(ctx, good, body), wharf.ErrInvalidSignature, secret)
	}
	// The timestamp is signed: another t with the same v1 fails.
	require.ErrorIs(t, v.Verify(ctx, stripeVectorHeader("t=1700000001,v1="+stripeVectorV1), body), wharf.ErrInvalidSignature)
	// One byte of the body changed.
	tampered := []byte(stripeVectorBody)
	tampered[10] = 'X'
	require.ErrorIs(t, v.Verify(ctx, good, tampered), wharf.ErrInvalidSignature)
	// Only a v0.
	require.ErrorIs(t, v.Verify(ctx, stripeVectorHeader("t=1700000000,v0="+stripeVectorV1), body), wharf.ErrInvalidSignature)
	// Stale and future, by the verifier's clock.
	wharf.SetClock(v, at(time.Unix(stripeVectorT, 0).Add(5*time.Minute+time.Second)))
	require.ErrorIs(t, v.Verify(ctx, good, body), wharf.ErrInvalidSignature)
	wharf.SetClock(v, at(time.Unix(stripeVectorT, 0).Add(-5*time.Minute-time.Second)))
	require.ErrorIs(t, v.Verify(ctx, good, body), wharf.ErrInvalidSignature)
}

func TestStripeIdentity(t *testing.T) {
	t.Parallel()
	v := wharf.Stripe("whsec_x")
	ident, err := v.Identify(http.Header{}, []byte(stripeVectorBody))
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "evt_1NG8Du2eZvKYlo2CUI79vXWy", Type: "invoice.paid"}, ident)

	// The documented ordering key override.
	ident, err = wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("data.object.customer")}, v, http.Header{}, []byte(stripeVectorBody))
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "evt_1NG8Du2eZvKYlo2CUI79vXWy", Type: "invoice.paid", OrderingKey: "cus_9s6XKzkNRiz8i3"}, ident)

	// An event without a customer has no ordering key, and is not refused.
	ident, err = wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("data.object.customer")}, v, http.Header{},
		[]byte(`{"id":"evt_2","type":"balance.available","data":{"object":{"object":"balance"}}}`))
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "evt_2", Type: "balance.available"}, ident)

	for body, want := range map[string]string{
		`{"type":"invoice.paid"}`:         `wharf: invalid event identity: id from JSON "id": is missing`,
		`{"id":"evt_1"}`:                  `wharf: invalid event identity: type from JSON "type": is missing`,
		`{"id":"","type":"invoice.paid"}`: `wharf: invalid event identity: id from JSON "id": is missing`,
		`{"id":null,"type":"x"}`:          `wharf: invalid event identity: id from JSON "id": is missing`,
		`{"id":{"a":1},"type":"x"}`:       `wharf: invalid event identity: id from JSON "id": is an object, not a string or a number`,
		`{"id":"evt_1","type":"*"}`:       `wharf: invalid event identity: type from JSON "type": "*" is reserved to mean any type`,
		`not json`:                        `wharf: invalid event identity: id from JSON "id": body is not valid JSON: invalid literal at offset 0`,
		`<xml/>`:                          `wharf: invalid event identity: id from JSON "id": body is not valid JSON: unexpected character at offset 0`,
		`{"id":"evt_1","type":"x"} trail`: `wharf: invalid event identity: id from JSON "id": body is not valid JSON: unexpected data after the top-level value at offset 26`,
	} {
		_, err := v.Identify(http.Header{}, []byte(body))
		require.ErrorIs(t, err, wharf.ErrInvalidIdentity, body)
		require.EqualError(t, err, want, body)
	}
}
