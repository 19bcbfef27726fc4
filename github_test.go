package wharf_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// GitHub's documented example, "Validating webhook deliveries", section
// "Testing the webhook payload validation":
// https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
const (
	githubVectorSecret    = "It's a Secret to Everybody"
	githubVectorBody      = "Hello, World!"
	githubVectorSignature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
)

func TestGitHubPublishedVector(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := http.Header{}
	h.Set("X-Hub-Signature-256", githubVectorSignature)
	body := []byte(githubVectorBody)

	require.NoError(t, wharf.GitHub(githubVectorSecret).Verify(ctx, h, body))
	require.NoError(t, wharf.GitHub("old secret", githubVectorSecret).Verify(ctx, h, body), "rotation")
	require.Equal(t, githubVectorSignature, wharf.SignGitHub(githubVectorSecret, body).Get("X-Hub-Signature-256"))

	require.ErrorIs(t, wharf.GitHub("It's a secret to everybody").Verify(ctx, h, body), wharf.ErrInvalidSignature, "wrong secret")
	require.ErrorIs(t, wharf.GitHub(githubVectorSecret).Verify(ctx, h, []byte("Hello, World?")), wharf.ErrInvalidSignature, "tampered")
	require.ErrorIs(t, wharf.GitHub(githubVectorSecret).Verify(ctx, h, []byte("Hello, World! ")), wharf.ErrInvalidSignature, "appended")
}

func TestGitHubIdentity(t *testing.T) {
	t.Parallel()
	v := wharf.GitHub("s")
	h := http.Header{}
	h.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	h.Set("X-GitHub-Event", "pull_request")
	body := []byte(`{"action":"opened","number":1,"repository":{"id":35129377,"full_name":"octo/repo"}}`)

	ident, err := v.Identify(h, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "72d3162e-cc78-11e3-81ab-4c9367dc0958", Type: "pull_request"}, ident)

	// An ordering key per repository, from a number.
	ident, err = wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("repository.id")}, v, h, body)
	require.NoError(t, err)
	require.Equal(t, "35129377", ident.OrderingKey)

	h.Del("X-GitHub-Event")
	_, err = v.Identify(h, body)
	require.EqualError(t, err, `wharf: invalid event identity: type from header "X-GitHub-Event": is missing`)
	h.Del("X-GitHub-Delivery")
	_, err = v.Identify(h, body)
	require.EqualError(t, err, `wharf: invalid event identity: id from header "X-GitHub-Delivery": is missing`)
}

// A webhook whose content type is application/x-www-form-urlencoded (the
// default of hooks created through the API) carries its JSON in the form
// field "payload"; FromJSON reads it there, as for Slack interactions.
func TestGitHubIdentityFormContentType(t *testing.T) {
	t.Parallel()
	v := wharf.GitHub("s")
	h := http.Header{}
	h.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	h.Set("X-GitHub-Event", "pull_request")
	h.Set("Content-Type", "application/x-www-form-urlencoded")
	body := []byte(url.Values{"payload": {`{"action":"opened","number":1,"repository":{"id":35129377,"full_name":"octo/repo"}}`}}.Encode())

	ident, err := wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("repository.id")}, v, h, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "72d3162e-cc78-11e3-81ab-4c9367dc0958", Type: "pull_request", OrderingKey: "35129377"}, ident)

	// A form without a payload has no JSON to read.
	_, err = wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("repository.id")}, v, h, []byte("a=1"))
	require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
}
