package wharf

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/url"
	"strings"
)

const (
	githubName            = "github"
	githubSignature       = "X-Hub-Signature-256"
	githubLegacySignature = "X-Hub-Signature"
	githubDelivery        = "X-GitHub-Delivery"
	githubEvent           = "X-GitHub-Event"
)

// GitHubVerifier verifies GitHub webhooks:
//
//	X-Hub-Signature-256: sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17
//
// the hex HMAC-SHA256 of the body keyed with the webhook's secret. The
// legacy SHA-1 X-Hub-Signature is not accepted.
//
// Its default identity (see Identify): the id is the X-GitHub-Delivery
// header (a GUID, which a redelivery keeps), the type the X-GitHub-Event
// header ("push", "pull_request"), without the body's "action": handle
// "pull_request" and switch on the action in the handler. There is no
// ordering key. FromJSON reads the JSON body, or, for a webhook whose
// content type is application/x-www-form-urlencoded, the JSON in its form
// field "payload".
//
// GitHub's scheme signs neither a timestamp nor these headers, only the
// body: whoever captured a delivery could send its body again under a new
// delivery id, and it would be stored as a new event, or under another
// X-GitHub-Event, and it would reach that type's handler. Serve the
// endpoint over HTTPS only, and have handlers check the body's shape.
//
// A GitHubVerifier is safe for concurrent use; do not change its fields
// while it is in use.
type GitHubVerifier struct {
	// Secrets are the webhook's secrets. A request signed with any of them
	// is accepted (keep the old one here while changing it).
	Secrets []string

	// Lookup, when set, replaces Secrets: it returns the secrets for each
	// request (see SecretLookup), for instance per X-GitHub-Hook-Installation-Target-ID.
	Lookup SecretLookup
}

// GitHub returns a verifier for GitHub webhooks with the webhook's secrets;
// give several while changing it.
func GitHub(secrets ...string) *GitHubVerifier {
	return &GitHubVerifier{Secrets: append([]string(nil), secrets...)}
}

// Verify checks X-Hub-Signature-256 against the body. Several signatures
// (repeated headers, or a comma-separated list) are accepted if one
// matches. Errors wrap ErrInvalidSignature, except those of the secret
// lookup and of a misconfigured verifier (ErrInvalidSource); see Verifier.
func (v *GitHubVerifier) Verify(ctx context.Context, header http.Header, body []byte) error {
	const p = githubName
	if err := v.validate(); err != nil {
		return err
	}
	values := header.Values(githubSignature)
	if len(values) == 0 && header.Get(githubLegacySignature) != "" {
		return invalidSignature(p, "header %s is missing (the SHA-1 %s is not accepted)", githubSignature, githubLegacySignature)
	}
	sigs, err := parseSignatures(p, githubSignature, values, splitOn(","), "sha256=", hexSignature, sha256.Size)
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

func (v *GitHubVerifier) validate() error {
	return validateSecrets(githubName, v.Secrets, v.Lookup)
}

// Identify returns the default identity of a verified request: id from
// X-GitHub-Delivery, type from X-GitHub-Event, no ordering key. Errors wrap
// ErrInvalidIdentity.
func (v *GitHubVerifier) Identify(header http.Header, body []byte) (Identity, error) {
	return identifyDefaults(v, header, body)
}

// prepareIdentity points FromJSON at the form field "payload" of a webhook
// whose content type is application/x-www-form-urlencoded, which is where
// GitHub puts the JSON then. Its defaults read headers only, so a source
// without FromJSON fields never parses the form.
func (v *GitHubVerifier) prepareIdentity(r *identityRequest) {
	if len(r.paths) == 0 || !strings.HasPrefix(strings.ToLower(r.header.Get("Content-Type")), "application/x-www-form-urlencoded") {
		return
	}
	form, err := url.ParseQuery(string(r.body))
	switch {
	case err != nil:
		r.docErr = "the form body is malformed: " + err.Error()
	case !form.Has("payload"):
		r.docErr = "the form body has no payload"
	default:
		r.doc = []byte(form.Get("payload"))
	}
}

func (v *GitHubVerifier) defaultIdentity(r *identityRequest) (id, typ, key fieldValue) {
	id = fieldValue{value: r.header.Get(githubDelivery), from: `header "` + githubDelivery + `"`}
	typ = fieldValue{value: r.header.Get(githubEvent), from: `header "` + githubEvent + `"`}
	return id, typ, key
}
