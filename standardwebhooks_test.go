package wharf_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// standardWebhooksVectors are published test vectors of the Standard
// Webhooks scheme.
var standardWebhooksVectors = []struct {
	source    string
	secret    string
	id        string
	timestamp int64
	body      string
	signature string
}{
	{
		// github.com/standard-webhooks/standard-webhooks,
		// libraries/go/webhook_test.go, TestWebhookSign (the same values
		// are in the other reference libraries' tests).
		source:    "standard-webhooks reference library",
		secret:    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		id:        "msg_p5jXN8AQM9LWM0D4loKWxJek",
		timestamp: 1614265330,
		body:      `{"test": 2432232314}`,
		signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
	},
	{
		// Svix's manual verification guide,
		// https://docs.svix.com/receiving/verifying-payloads/how-manual
		// (reproduced independently with:
		//   printf '%s' 'msg_loFOjxBNrRLzqYUf.1731705121.{"event_type":"ping","data":{"success":true}}' |
		//     openssl dgst -sha256 -mac HMAC -macopt hexkey:$(printf '%s' plJ3nmyCDGBKInavdOK15jsl | base64 -d | xxd -p) -binary | base64
		// ).
		source:    "svix docs",
		secret:    "whsec_plJ3nmyCDGBKInavdOK15jsl",
		id:        "msg_loFOjxBNrRLzqYUf",
		timestamp: 1731705121,
		body:      `{"event_type":"ping","data":{"success":true}}`,
		signature: "v1,rAvfW3dJ/X/qxhsaXPOyyCGmRKsaKWcsNccKXlIktD0=",
	},
}

func TestStandardWebhooksPublishedVectors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, vec := range standardWebhooksVectors {
		t.Run(vec.source, func(t *testing.T) {
			signedAt := time.Unix(vec.timestamp, 0)
			h := http.Header{}
			h.Set("webhook-id", vec.id)
			h.Set("webhook-timestamp", strconv.FormatInt(vec.timestamp, 10))
			h.Set("webhook-signature", vec.signature)
			body := []byte(vec.body)

			v := wharf.StandardWebhooks(vec.secret)
			wharf.SetClock(v, at(signedAt))
			require.NoError(t, v.Verify(ctx, h, body))

			// The reference libraries accept the secret without its prefix.
			bare := wharf.StandardWebhooks(vec.secret[len("whsec_"):])
			wharf.SetClock(bare, at(signedAt.Add(wharf.DefaultTolerance)))
			require.NoError(t, bare.Verify(ctx, h, body))

			// The signer reproduces the published signature.
			require.Equal(t, vec.signature, wharf.SignStandardWebhooks(vec.secret, vec.id, signedAt, body).Get("Webhook-Signature"))

			// Negative cases on the published request.
			wharf.SetClock(v, at(signedAt.Add(wharf.DefaultTolerance+time.Second)))
			require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSignature, "stale")
			wharf.SetClock(v, at(signedAt))
			tampered := append([]byte(nil), body...)
			tampered[len(tampered)-2] ^= 1
			require.ErrorIs(t, v.Verify(ctx, h, tampered), wharf.ErrInvalidSignature, "tampered")
			other := wharf.StandardWebhooks(swSecret("another key"))
			wharf.SetClock(other, at(signedAt))
			require.ErrorIs(t, other.Verify(ctx, h, body), wharf.ErrInvalidSignature, "wrong secret")
		})
	}
}

func TestStandardWebhooksOnlyV1(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	secret := swSecret("only v1")
	body := []byte(`{"type":"user.created"}`)
	h := wharf.SignStandardWebhooks(secret, "msg_1", fixedNow, body)
	v := clocked(wharf.StandardWebhooks(secret))

	// The same MAC labelled v1a (the asymmetric scheme) is not accepted.
	sig := h.Get("Webhook-Signature")
	h.Set("Webhook-Signature", "v1a,"+sig[len("v1,"):])
	require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSignature)

	// Several spaces and repeated headers are fine.
	h.Set("Webhook-Signature", "  v1a,abc   "+sig+"  ")
	require.NoError(t, v.Verify(ctx, h, body))
	h.Set("Webhook-Signature", "v1a,abc")
	h.Add("Webhook-Signature", sig)
	require.NoError(t, v.Verify(ctx, h, body))
}

func TestStandardWebhooksSecrets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	body := []byte(`{}`)
	for _, bad := range []string{"whsec_", "whsec_!!!", "not base64 at all", "whsec_****"} {
		v := clocked(wharf.StandardWebhooks(bad))
		require.ErrorIs(t, wharf.Validate(v), wharf.ErrInvalidSource, bad)
		h := wharf.SignStandardWebhooks(swSecret("x"), "msg_1", fixedNow, body)
		require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSource, bad)
		require.Panics(t, func() { wharf.SignStandardWebhooks(bad, "msg_1", fixedNow, body) }, bad)
	}
	// Unpadded base64 is accepted, as some senders print it so.
	key := "whsec_" + "c2VjcmV0LWtleS0xMjM0NTY3OA" // "secret-key-12345678" without padding
	v := clocked(wharf.StandardWebhooks(key))
	require.NoError(t, wharf.Validate(v))
	require.NoError(t, v.Verify(ctx, wharf.SignStandardWebhooks(key, "msg_1", fixedNow, body), body))
}

func TestStandardWebhooksIdentity(t *testing.T) {
	t.Parallel()
	v := wharf.StandardWebhooks(swSecret("x"))
	h := http.Header{}
	h.Set("Webhook-Id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
	ident, err := v.Identify(h, []byte(`{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52"}}`))
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", Type: "contact.created"}, ident)

	_, err = v.Identify(h, []byte(`{"data":{}}`))
	require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
	require.EqualError(t, err, `wharf: invalid event identity: type from JSON "type": is missing`)

	_, err = v.Identify(http.Header{}, []byte(`{"type":"a"}`))
	require.EqualError(t, err, `wharf: invalid event identity: id from header "webhook-id": is missing`)
}

// svixHeaders renames a Standard Webhooks request's headers to the names
// Svix sends by default.
func svixHeaders(h http.Header) http.Header {
	out := http.Header{}
	for _, name := range []string{"id", "timestamp", "signature"} {
		out.Set("svix-"+name, h.Get("webhook-"+name))
	}
	return out
}

// Svix, and the providers built on it, send svix-id, svix-timestamp and
// svix-signature unless the account white-labelled them
// (https://docs.svix.com/receiving/verifying-payloads/how-manual): the
// published Svix vector, as Svix sends it, verifies, and the id is
// svix-id. The two families are never mixed.
func TestStandardWebhooksSvixHeaderNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	vec := standardWebhooksVectors[1]
	require.Equal(t, "svix docs", vec.source)
	body := []byte(vec.body)
	h := http.Header{}
	h.Set("svix-id", vec.id)
	h.Set("svix-timestamp", strconv.FormatInt(vec.timestamp, 10))
	h.Set("svix-signature", vec.signature)
	v := wharf.StandardWebhooks(vec.secret)
	wharf.SetClock(v, at(time.Unix(vec.timestamp, 0)))
	require.NoError(t, v.Verify(ctx, h, body))
	ident, err := v.Identify(h, []byte(`{"type":"ping"}`))
	require.NoError(t, err)
	require.Equal(t, vec.id, ident.ID)

	// A webhook-signature makes the request a webhook-* one: a svix-id
	// beside it is not read, for the signature or the id.
	mixed := h.Clone()
	mixed.Set("webhook-signature", vec.signature)
	require.ErrorIs(t, v.Verify(ctx, mixed, body), wharf.ErrInvalidSignature)

	both := h.Clone()
	both.Set("webhook-id", vec.id)
	both.Set("webhook-timestamp", strconv.FormatInt(vec.timestamp, 10))
	both.Set("webhook-signature", vec.signature)
	both.Set("svix-id", "msg_not_the_signed_one")
	require.NoError(t, v.Verify(ctx, both, body))
	ident, err = v.Identify(both, []byte(`{"type":"ping"}`))
	require.NoError(t, err)
	require.Equal(t, vec.id, ident.ID, "the id comes from the family that was verified")

	// Tampering still fails under Svix's names.
	tampered := h.Clone()
	tampered.Set("svix-id", "msg_other")
	require.ErrorIs(t, v.Verify(ctx, tampered, body), wharf.ErrInvalidSignature)
}

// A secret lookup that returns a secret that is not base64 fails the
// request as a misconfigured source, whatever the bad secret's place in
// the list: before, a genuine request was refused or accepted depending
// on the order.
func TestStandardWebhooksLookupWithABadSecret(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	good := swSecret("the tenant's key")
	body := []byte(`{"type":"ping"}`)
	h := wharf.SignStandardWebhooks(good, "msg_1", time.Now(), body)
	for _, secrets := range [][]string{{"not-base64!", good}, {good, "not-base64!"}} {
		v := &wharf.StandardWebhooksVerifier{Lookup: func(context.Context, http.Header, []byte) ([]string, error) {
			return secrets, nil
		}}
		err := v.Verify(ctx, h, body)
		require.ErrorIs(t, err, wharf.ErrInvalidSource, "%q", secrets)
		require.ErrorContains(t, err, "returned by the secret lookup", "%q", secrets)
	}
}
