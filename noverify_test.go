package wharf_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

func TestNoVerification(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	v := wharf.NoVerification("local development")
	require.NoError(t, v.Verify(ctx, http.Header{}, []byte("anything")))
	require.NoError(t, v.Verify(ctx, nil, nil))
	require.NoError(t, wharf.Validate(v))
	require.Equal(t, "local development", v.Reason)

	for _, reason := range []string{"", "   "} {
		bad := wharf.NoVerification(reason)
		require.ErrorIs(t, bad.Verify(ctx, http.Header{}, nil), wharf.ErrInvalidSource)
		require.ErrorIs(t, wharf.Validate(bad), wharf.ErrInvalidSource)
		require.NotErrorIs(t, bad.Verify(ctx, http.Header{}, nil), wharf.ErrInvalidSignature)
	}

	// No default identity: the source names its fields.
	_, err := v.Identify(http.Header{}, []byte(`{"id":"1","type":"t"}`))
	require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
	ident, err := wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromJSON("type")}, v, nil, []byte(`{"id":"1","type":"t"}`))
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "1", Type: "t"}, ident)
}
