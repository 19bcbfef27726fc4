package console

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestHeaderMask(t *testing.T) {
	t.Parallel()
	m := newHeaderMask([]string{"x-tenant-key"})
	for _, h := range []string{"Authorization", "Stripe-Signature", "webhook-signature", "X-Hub-Signature-256", "X-Slack-Signature",
		"X-Shopify-Hmac-Sha256", "Cookie", "Set-Cookie", "X-Tenant-Key", "X-Gitlab-Token", "X-Webhook-Secret", "X-Signature", "X-Api-Key",
		"X_Api_Key", "x_api_key", "Paypal-Transmission-Sig", "X-Access-Key", "Ocp-Apim-Subscription-Key", "X-Functions-Key",
		"X-Amz-Credential", "Plaid-Verification", "Verif-Hash", "X-Webhook-Hash", "X-Trello-Webhook", "x-trello-webhook",
		"Cf-Access-Jwt-Assertion", "X-Goog-Iap-Jwt-Assertion", "X-Amzn-Oidc-Data", "X-Amzn-Oidc-Accesstoken"} {
		require.True(t, m.masked(h), h)
	}
	for _, h := range []string{"Content-Type", "User-Agent", "X-Request-Id", "X-GitHub-Event", "Webhook-Id", "X-Shopify-Topic",
		"Webhook-Timestamp", "X-Slack-Request-Timestamp", "X-GitHub-Hook-ID", "X-Amzn-Oidc-Identity", "Cf-Access-Client-Id", "Cf-Ray"} {
		require.False(t, m.masked(h), h)
	}
	rows := m.rows(http.Header{"Stripe-Signature": {"t=1,v1=abc"}, "B": {"1", "2"}, "A": {"x"}})
	require.Equal(t, []headerRow{
		{Name: "A", Values: []string{"x"}},
		{Name: "B", Values: []string{"1", "2"}},
		{Name: "Stripe-Signature", Values: []string{maskedValue}, Masked: true},
	}, rows)
}

func TestViewBody(t *testing.T) {
	t.Parallel()
	require.Equal(t, bodyView{Kind: "JSON", Text: "{\n  \"a\": [\n    1\n  ]\n}", Size: 9, Shown: 22}, viewBody([]byte(`{"a":[1]}`)))
	require.Equal(t, bodyView{Kind: "text", Text: "a=1&b=é", Size: 8, Shown: 8}, viewBody([]byte("a=1&b=é")))
	bin := viewBody([]byte{0xff, 0x00})
	require.Equal(t, "binary", bin.Kind)
	require.Contains(t, bin.Text, "ff 00")
	require.Equal(t, bodyView{Kind: "text", Text: "", Size: 0, Shown: 0}, viewBody(nil))

	big := viewBody([]byte(strings.Repeat("é", maxBodyShown))) // 2 bytes each: cut in the middle
	require.True(t, big.Cut)
	require.Equal(t, maxBodyShown, big.Shown, "cut between two characters")
	require.Equal(t, 2*maxBodyShown, big.Size)

	odd := viewBody([]byte("x" + strings.Repeat("é", maxBodyShown/2))) // the cut falls inside a character
	require.True(t, odd.Cut)
	require.Equal(t, maxBodyShown-1, odd.Shown, "backed up to the start of the character cut in two")
	require.True(t, utf8.ValidString(odd.Text))

	// JSON whose string holds a byte that is not UTF-8: json.Valid takes
	// it, but it is shown as binary (cutting it as text rescanned the
	// whole output once per byte dropped).
	badJSON := []byte(`{"a":"` + strings.Repeat("x", 1<<16) + "\xff" + strings.Repeat("y", maxBodyShown) + `"}`)
	bad := viewBody(badJSON)
	require.Equal(t, "binary", bad.Kind)
	require.True(t, bad.Cut)
	require.True(t, utf8.ValidString(bad.Text))
}
