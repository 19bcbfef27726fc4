package wharf

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"time"
)

// The Sign functions sign a body the way each provider does, for tests
// (yours, and the wharftest package's): they return the headers a request
// needs to pass the matching verifier, and nothing else (add the identity
// headers, such as X-GitHub-Delivery, yourself). Merge them into a
// request's headers with
//
//	for k, v := range wharf.SignStripe(secret, time.Now(), body) {
//		req.Header[k] = v
//	}
//
// They panic on a secret the verifier would refuse, as tests want.

// SignStandardWebhooks returns the webhook-id, webhook-timestamp and
// webhook-signature headers of a Standard Webhooks request. secret is
// "whsec_<base64>" (or the bare base64 key).
func SignStandardWebhooks(secret, id string, ts time.Time, body []byte) http.Header {
	key, err := standardWebhooksKey(secret)
	if err != nil {
		panic(err)
	}
	unix := strconv.FormatInt(ts.Unix(), 10)
	mac := macOf(sha256.New, key, []byte(id+"."+unix+"."), body)
	h := http.Header{}
	h.Set(swStandardHeaders.id, id)
	h.Set(swStandardHeaders.timestamp, unix)
	h.Set(swStandardHeaders.signature, "v1,"+base64.StdEncoding.EncodeToString(mac))
	return h
}

// SignStripe returns the Stripe-Signature header ("t=<unix>,v1=<hex>") of a
// Stripe webhook signed with secret used as a literal string.
func SignStripe(secret string, ts time.Time, body []byte) http.Header {
	mustSecret(stripeName, secret)
	unix := strconv.FormatInt(ts.Unix(), 10)
	mac := macOf(sha256.New, []byte(secret), []byte(unix+"."), body)
	h := http.Header{}
	h.Set(stripeHeader, "t="+unix+",v1="+hex.EncodeToString(mac))
	return h
}

// SignGitHub returns the X-Hub-Signature-256 header ("sha256=<hex>") of a
// GitHub webhook.
func SignGitHub(secret string, body []byte) http.Header {
	mustSecret(githubName, secret)
	h := http.Header{}
	h.Set(githubSignature, "sha256="+hex.EncodeToString(macOf(sha256.New, []byte(secret), body)))
	return h
}

// SignShopify returns the X-Shopify-Hmac-Sha256 header (base64) of a
// Shopify webhook.
func SignShopify(secret string, body []byte) http.Header {
	mustSecret(shopifyName, secret)
	h := http.Header{}
	h.Set(shopifyHMAC, base64.StdEncoding.EncodeToString(macOf(sha256.New, []byte(secret), body)))
	return h
}

// SignSlack returns the X-Slack-Request-Timestamp and X-Slack-Signature
// ("v0=<hex>") headers of a request from Slack.
func SignSlack(secret string, ts time.Time, body []byte) http.Header {
	mustSecret(slackName, secret)
	unix := strconv.FormatInt(ts.Unix(), 10)
	h := http.Header{}
	h.Set(slackTimestamp, unix)
	h.Set(slackSignature, "v0="+hex.EncodeToString(macOf(sha256.New, []byte(secret), []byte("v0:"+unix+":"), body)))
	return h
}

// SignHMAC returns the headers that make a request pass v with secret: the
// signature header (with v's prefix, hash and encoding) and, when v has a
// TimestampHeader, that header with ts in Unix seconds (v.ParseTimestamp is
// not consulted: it has no inverse). v.SignedContent sees only the headers
// SignHMAC sets.
func SignHMAC(v *HMACVerifier, secret string, ts time.Time, body []byte) http.Header {
	if err := v.validateShape(); err != nil {
		panic(err)
	}
	mustSecret(hmacName, secret)
	h := http.Header{}
	var unix string
	if v.TimestampHeader != "" {
		unix = strconv.FormatInt(ts.Unix(), 10)
		h.Set(v.TimestampHeader, unix)
	}
	mac := macOf(v.hash(), []byte(secret), v.Content(unix, h, body))
	enc := hex.EncodeToString(mac)
	if v.Encoding == Base64Encoding {
		enc = base64.StdEncoding.EncodeToString(mac)
	}
	h.Set(v.Header, v.Prefix+enc)
	return h
}

func mustSecret(provider, secret string) {
	if err := checkSecrets(provider, []string{secret}); err != nil {
		panic(err)
	}
}
