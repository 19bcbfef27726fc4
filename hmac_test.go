package wharf_test

import (
	"context"
	"crypto/sha1"
	"crypto/sha512"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

func TestHMACPublishedVectors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("GitHub's documented example, configured generically", func(t *testing.T) {
		// https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
		v := wharf.HMAC("X-Hub-Signature-256", githubVectorSecret)
		v.Prefix = "sha256="
		h := http.Header{}
		h.Set("X-Hub-Signature-256", githubVectorSignature)
		require.NoError(t, v.Verify(ctx, h, []byte(githubVectorBody)))
		require.ErrorIs(t, v.Verify(ctx, h, []byte("Hello, World?")), wharf.ErrInvalidSignature)
		require.Equal(t, h, wharf.SignHMAC(v, githubVectorSecret, time.Time{}, []byte(githubVectorBody)))
	})

	t.Run("Slack's documented example, configured generically", func(t *testing.T) {
		// https://api.slack.com/authentication/verifying-requests-from-slack
		v := wharf.HMAC("X-Slack-Signature", slackVectorSecret)
		v.Prefix = "v0="
		v.TimestampHeader = "X-Slack-Request-Timestamp"
		v.SignedContent = func(ts string, _ http.Header, body []byte) []byte {
			return append([]byte("v0:"+ts+":"), body...)
		}
		wharf.SetClock(v, at(time.Unix(slackVectorTimestamp, 0)))
		require.NoError(t, v.Verify(ctx, slackVectorHeader(), []byte(slackVectorBody)))
		wharf.SetClock(v, at(time.Unix(slackVectorTimestamp, 0).Add(time.Hour)))
		require.ErrorIs(t, v.Verify(ctx, slackVectorHeader(), []byte(slackVectorBody)), wharf.ErrInvalidSignature)
	})

	t.Run("Shopify's library vector, configured generically", func(t *testing.T) {
		// github.com/Shopify/shopify-app-js, packages/apps/shopify-api/lib/webhooks/__tests__/validate.test.ts
		v := wharf.HMAC("X-Shopify-Hmac-Sha256", shopifyVectorSecret)
		v.Encoding = wharf.Base64Encoding
		require.NoError(t, v.Verify(ctx, shopifyVectorHeader(), []byte(shopifyVectorBody)))
	})

	t.Run("SHA-512, base64, timestamped: OpenSSL vector", func(t *testing.T) {
		// No provider publishes this scheme; computed with OpenSSL:
		//   printf '%s' '1700000000.{"id":"ping_1","kind":"ping"}' | openssl dgst -sha512 -hmac 'generic-secret' -binary | base64 -w0
		const want = "OqYzZ87TfswA87DOGunrP//tVLkg+OzFXo3lCngxAXdB0Pp6NFu5C+2UXH2Ctc3TJX4L3pUbOwfC7qXV1SqzTw=="
		v := genericHMAC("generic-secret")
		wharf.SetClock(v, at(fixedNow))
		h := http.Header{}
		h.Set("X-Timestamp", "1700000000")
		h.Set("X-Signature", "sha512="+want)
		body := []byte(`{"id":"ping_1","kind":"ping"}`)
		require.NoError(t, v.Verify(ctx, h, body))
		require.Equal(t, h, wharf.SignHMAC(genericHMAC(), "generic-secret", fixedNow, body))
	})
}

func TestHMACOptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	body := []byte(`{"n":1}`)

	t.Run("legacy SHA-1", func(t *testing.T) {
		v := wharf.HMAC("X-Hub-Signature", "s")
		v.Hash = sha1.New
		v.Prefix = "sha1="
		require.NoError(t, v.Verify(ctx, wharf.SignHMAC(v, "s", time.Time{}, body), body))
		h := http.Header{}
		h.Set("X-Hub-Signature", "sha1="+"00112233445566778899aabbccddeeff00112233")
		require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSignature)
		// A SHA-256-sized signature is malformed for SHA-1.
		h.Set("X-Hub-Signature", wharf.SignGitHub("s", body).Get("X-Hub-Signature-256")[len("sha256="):])
		require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSignature)
	})

	t.Run("custom timestamp format and signed content", func(t *testing.T) {
		v := wharf.HMAC("X-Sig", "s")
		v.Hash = sha512.New
		v.TimestampHeader = "X-Sent-At"
		v.ParseTimestamp = func(s string) (time.Time, error) { return time.Parse(time.RFC3339, s) }
		v.SignedContent = func(ts string, h http.Header, body []byte) []byte {
			return append([]byte(h.Get("X-Request-Id")+"|"+ts+"|"), body...)
		}
		wharf.SetClock(v, at(fixedNow))
		h := http.Header{}
		h.Set("X-Sent-At", fixedNow.UTC().Format(time.RFC3339))
		h.Set("X-Request-Id", "req-7")
		content := append([]byte("req-7|"+h.Get("X-Sent-At")+"|"), body...)
		plain := wharf.HMAC("X-Sig", "s")
		plain.Hash = sha512.New
		h.Set("X-Sig", wharf.SignHMAC(plain, "s", time.Time{}, content).Get("X-Sig"))
		require.NoError(t, v.Verify(ctx, h, body))

		h2 := h.Clone()
		h2.Set("X-Request-Id", "req-8")
		require.ErrorIs(t, v.Verify(ctx, h2, body), wharf.ErrInvalidSignature, "signed header changed")
		h2 = h.Clone()
		h2.Set("X-Sent-At", "yesterday")
		require.ErrorIs(t, v.Verify(ctx, h2, body), wharf.ErrInvalidSignature, "unparsable time")
		wharf.SetClock(v, at(fixedNow.Add(6*time.Minute)))
		require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSignature, "stale")
	})

	t.Run("misconfigured", func(t *testing.T) {
		h := http.Header{}
		for name, v := range map[string]*wharf.HMACVerifier{
			"no header":          wharf.HMAC("", "s"),
			"bad encoding":       {Header: "X", Secrets: []string{"s"}, Encoding: 7},
			"parse without ts":   {Header: "X", Secrets: []string{"s"}, ParseTimestamp: func(string) (time.Time, error) { return time.Time{}, nil }},
			"negative tolerance": {Header: "X", Secrets: []string{"s"}, Tolerance: -1},
			"no secret":          wharf.HMAC("X"),
		} {
			require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSource, name)
			require.ErrorIs(t, wharf.Validate(v), wharf.ErrInvalidSource, name)
		}
	})

	t.Run("no default identity", func(t *testing.T) {
		v := wharf.HMAC("X", "s")
		_, err := v.Identify(http.Header{}, body)
		require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
		require.EqualError(t, err, "wharf: invalid event identity: id: the source's verifier has no default; set SourceFields.ID")
		ident, err := wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("X-Id"), Type: wharf.FromJSON("n")}, v,
			http.Header{"X-Id": {"abc"}}, body)
		require.NoError(t, err)
		require.Equal(t, wharf.Identity{ID: "abc", Type: "1"}, ident)
		_, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("X-Id")}, v, http.Header{"X-Id": {"abc"}}, body)
		require.EqualError(t, err, "wharf: invalid event identity: type: the source's verifier has no default; set SourceFields.Type")
		require.True(t, errors.Is(err, wharf.ErrInvalidIdentity))
	})
}
