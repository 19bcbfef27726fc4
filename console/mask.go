package console

import (
	"net/http"
	"slices"
	"strings"
)

// maskedHeaders are always masked: the providers' signature headers
// (a signature with its body lets anyone replay the request elsewhere,
// and some schemes leak more), credentials and cookies.
var maskedHeaders = []string{
	"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie",
	"Stripe-Signature", "Webhook-Signature", "X-Hub-Signature", "X-Hub-Signature-256",
	"X-Slack-Signature", "X-Shopify-Hmac-Sha256", "X-Twilio-Signature", "X-Api-Key",
}

// maskedWords mask every header whose name contains one of them, for
// the headers of providers and proxies not listed above.
// Names are matched in lower case with underscores read as hyphens
// (X_Api_Key); "-sig" and "-key" catch PayPal's Transmission-Sig and the
// cloud gateways' subscription and access keys, "hash" Flutterwave's
// Verif-Hash, which carries the webhook secret itself.
var maskedWords = []string{"signature", "secret", "token", "hmac", "auth", "password", "api-key", "apikey", "cookie", "session",
	"-sig", "-key", "credential", "verification", "hash"}

// maskedValue replaces a masked header's value.
const maskedValue = "•••• masked"

// headerMask decides which header values the entry page hides.
type headerMask map[string]bool

func newHeaderMask(extra []string) headerMask {
	m := headerMask{}
	for _, h := range slices.Concat(maskedHeaders, extra) {
		m[http.CanonicalHeaderKey(h)] = true
	}
	return m
}

func (m headerMask) masked(name string) bool {
	name = strings.ReplaceAll(name, "_", "-")
	if m[http.CanonicalHeaderKey(name)] {
		return true
	}
	lower := strings.ToLower(name)
	return slices.ContainsFunc(maskedWords, func(w string) bool { return strings.Contains(lower, w) })
}

// headerRow is one header as the entry page shows it.
type headerRow struct {
	Name   string
	Values []string
	Masked bool
}

// rows returns h's headers in name order, masked ones with their values
// replaced: a masked value never reaches the template.
func (m headerMask) rows(h http.Header) []headerRow {
	out := make([]headerRow, 0, len(h))
	for name, values := range h {
		row := headerRow{Name: name, Values: values}
		if m.masked(name) {
			row.Masked = true
			row.Values = []string{maskedValue}
		}
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b headerRow) int { return strings.Compare(a.Name, b.Name) })
	return out
}
