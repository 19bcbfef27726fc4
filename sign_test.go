package wharf_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

func TestSignRefusesEmptySecrets(t *testing.T) {
	t.Parallel()
	body := []byte("{}")
	for name, sign := range map[string]func(){
		"standard webhooks":   func() { wharf.SignStandardWebhooks("", "msg_1", fixedNow, body) },
		"stripe":              func() { wharf.SignStripe("", fixedNow, body) },
		"github":              func() { wharf.SignGitHub("", body) },
		"shopify":             func() { wharf.SignShopify("", body) },
		"slack":               func() { wharf.SignSlack("", fixedNow, body) },
		"hmac":                func() { wharf.SignHMAC(wharf.HMAC("X-Sig"), "", fixedNow, body) },
		"hmac without header": func() { wharf.SignHMAC(wharf.HMAC(""), "s", fixedNow, body) },
	} {
		require.Panics(t, sign, name)
	}
}

func TestSignedRequestsPassVerification(t *testing.T) {
	t.Parallel()
	// A request built the way a test of a service would build one, through
	// net/http, so header canonicalization is exercised too.
	body := []byte(`{"id":"evt_1","type":"invoice.paid"}`)
	req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", strings.NewReader(string(body)))
	for k, v := range wharf.SignStripe("whsec_test", time.Now(), body) {
		req.Header[k] = v
	}
	require.NoError(t, wharf.Stripe("whsec_test").Verify(context.Background(), req.Header, body))

	sw := wharf.SignStandardWebhooks(swSecret("k"), "msg_1", time.Now(), body)
	require.Equal(t, "msg_1", sw.Get("webhook-id"))
	require.NoError(t, wharf.StandardWebhooks(swSecret("k")).Verify(context.Background(), sw, body))

	sl := wharf.SignSlack("slack-secret", time.Now(), body)
	require.NoError(t, wharf.Slack("slack-secret").Verify(context.Background(), sl, body))
}

// A webhook endpoint's tests sign their requests like the provider does.
func ExampleSignStripe() {
	ctx := context.Background()
	secret := "whsec_test_secret"
	body := []byte(`{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}`)
	v := wharf.Stripe(secret)

	header := wharf.SignStripe(secret, time.Now(), body)
	fmt.Println(v.Verify(ctx, header, body))

	ident, err := wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("data.object.customer")}, v, header, body)
	fmt.Printf("%+v %v\n", ident, err)

	fmt.Println(v.Verify(ctx, header, append(body, ' ')))
	fmt.Println(wharf.Stripe("whsec_other").Verify(ctx, header, body))
	header.Set("Stripe-Signature", "v1=00")
	fmt.Println(v.Verify(ctx, header, body))
	// Output:
	// <nil>
	// {ID:evt_1NG8Du2eZvKYlo2CUI79vXWy Type:invoice.paid OrderingKey:cus_1} <nil>
	// wharf: invalid signature: stripe: no v1 signature matches (1 given, 1 secrets tried)
	// wharf: invalid signature: stripe: no v1 signature matches (1 given, 1 secrets tried)
	// wharf: invalid signature: stripe: header Stripe-Signature has no timestamp (t=)
}
