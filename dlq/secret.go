package dlq

import (
	"net/http"
	"slices"
	"strings"
)

// secretHeaderNames are masked by name: headers whose names do not say
// what they carry. Trello's X-Trello-Webhook is its HMAC-SHA1 signature of
// the request; X-Amzn-Oidc-Data is the JWT by which an AWS load balancer
// asserts who the user is.
var secretHeaderNames = []string{"X-Trello-Webhook", "X-Amzn-Oidc-Data"}

// secretWords mask every header whose name contains one of them, in lower
// case with underscores read as hyphens (X_Api_Key): "key" catches API,
// access and subscription keys, "-sig" PayPal's Transmission-Sig, "hash"
// Flutterwave's Verif-Hash (the webhook secret itself), "jwt" and
// "assertion" the identity assertions of access proxies
// (Cf-Access-Jwt-Assertion, X-Goog-Iap-Jwt-Assertion).
var secretWords = []string{"key", "auth", "password", "secret", "token", "signature", "hmac",
	"cookie", "session", "credential", "verification", "-sig", "hash", "jwt", "assertion"}

// SecretHeader reports whether the value of the header name is a
// credential or a signature, which whoever shows an Entry's Headers should
// mask (the web console's entry page and wharf dlq show do): a credential
// opens the service or the provider's API, and a signature leaks nothing
// of the secret but, with the body, is a request anyone could replay to
// the endpoint within the provider's tolerance. Entry.Headers keeps them
// as received, so that a replay delivers what the provider sent.
func SecretHeader(name string) bool {
	name = strings.ReplaceAll(name, "_", "-")
	if slices.Contains(secretHeaderNames, http.CanonicalHeaderKey(name)) {
		return true
	}
	lower := strings.ToLower(name)
	return slices.ContainsFunc(secretWords, func(w string) bool { return strings.Contains(lower, w) })
}
