package wharf_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// Shopify's official API library tests: github.com/Shopify/shopify-app-js,
// packages/apps/shopify-api/lib/webhooks/__tests__/validate.test.ts ("returns
// true for valid request": body '{"foo": "bar"}', expected hmac
// 'B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g='), with the secret
// apiSecretKey 'test_secret_key' of lib/__tests__/test-config.ts and the
// headers of webhooks/__tests__/utils.ts.
const (
	shopifyVectorSecret = "test_secret_key"
	shopifyVectorBody   = `{"foo": "bar"}`
	shopifyVectorHMAC   = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="
)

func shopifyVectorHeader() http.Header {
	h := http.Header{}
	h.Set("X-Shopify-Hmac-Sha256", shopifyVectorHMAC)
	h.Set("X-Shopify-Topic", "products/create")
	h.Set("X-Shopify-Webhook-Id", "123456789")
	h.Set("X-Shopify-Shop-Domain", "shop1.myshopify.io")
	h.Set("X-Shopify-Api-Version", "2023-01")
	return h
}

func TestShopifyPublishedVector(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := shopifyVectorHeader()
	body := []byte(shopifyVectorBody)

	require.NoError(t, wharf.Shopify(shopifyVectorSecret).Verify(ctx, h, body))
	require.NoError(t, wharf.Shopify("rotated_out", shopifyVectorSecret).Verify(ctx, h, body), "rotation")
	require.Equal(t, shopifyVectorHMAC, wharf.SignShopify(shopifyVectorSecret, body).Get("X-Shopify-Hmac-Sha256"))

	// Unpadded base64 of the same MAC.
	h2 := shopifyVectorHeader()
	h2.Set("X-Shopify-Hmac-Sha256", shopifyVectorHMAC[:len(shopifyVectorHMAC)-1])
	require.NoError(t, wharf.Shopify(shopifyVectorSecret).Verify(ctx, h2, body))

	require.ErrorIs(t, wharf.Shopify("test_secret_kex").Verify(ctx, h, body), wharf.ErrInvalidSignature, "wrong secret")
	require.ErrorIs(t, wharf.Shopify(shopifyVectorSecret).Verify(ctx, h, []byte(`{"foo":"bar"}`)), wharf.ErrInvalidSignature, "re-encoded")
	require.ErrorIs(t, wharf.Shopify(shopifyVectorSecret).Verify(ctx, h, []byte(`{"foo": "baz"}`)), wharf.ErrInvalidSignature, "tampered")
}

func TestShopifyIdentity(t *testing.T) {
	t.Parallel()
	v := wharf.Shopify("s")
	body := []byte(`{"id":820982911946154508,"email":"jon@example.com"}`)

	// Without an event id: the webhook id, qualified by the topic.
	h := shopifyVectorHeader()
	ident, err := v.Identify(h, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "products/create:123456789", Type: "products/create"}, ident)

	// With one, the event id wins: the same event delivered to two
	// subscriptions has the same identity.
	h.Set("X-Shopify-Event-Id", "7b8c9d0a-1234-5678-90ab-cdef12345678")
	ident, err = v.Identify(h, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "products/create:7b8c9d0a-1234-5678-90ab-cdef12345678", Type: "products/create"}, ident)
	h2 := h.Clone()
	h2.Set("X-Shopify-Webhook-Id", "987654321")
	ident2, err := v.Identify(h2, body)
	require.NoError(t, err)
	require.Equal(t, ident, ident2)

	// The same event id under another topic is another event.
	h2.Set("X-Shopify-Topic", "products/update")
	ident2, err = v.Identify(h2, body)
	require.NoError(t, err)
	require.NotEqual(t, ident.ID, ident2.ID)

	// Per-store ordering, and the raw event id when a user wants it.
	ident, err = wharf.IdentifyWith(wharf.SourceFields{
		ID:          wharf.FromHeader("X-Shopify-Event-Id"),
		OrderingKey: wharf.FromHeader("X-Shopify-Shop-Domain"),
	}, v, h, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "7b8c9d0a-1234-5678-90ab-cdef12345678", Type: "products/create", OrderingKey: "shop1.myshopify.io"}, ident)

	// A large numeric id stays exact.
	ident, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromJSON("id")}, v, h, body)
	require.NoError(t, err)
	require.Equal(t, "820982911946154508", ident.ID)

	h.Del("X-Shopify-Topic")
	_, err = v.Identify(h, body)
	require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
	h.Set("X-Shopify-Topic", "orders/paid")
	h.Del("X-Shopify-Event-Id")
	h.Del("X-Shopify-Webhook-Id")
	_, err = v.Identify(h, body)
	require.EqualError(t, err, `wharf: invalid event identity: id from header "X-Shopify-Event-Id" or "X-Shopify-Webhook-Id": is missing`)
}
