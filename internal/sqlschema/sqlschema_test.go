package sqlschema

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"wharf", "_w", "w_1", "a23456789012345678901234567890123456789012345678901234567890123"} {
		require.NoError(t, Validate(ok), ok)
	}
	for _, bad := range []string{"", "Wharf", "1w", "w-1", "w.x", `w"x`, "pg_w", "wé", "a234567890123456789012345678901234567890123456789012345678901234"} {
		require.Error(t, Validate(bad), bad)
	}
}

func TestRenderQuotesTheSchema(t *testing.T) {
	t.Parallel()
	require.Equal(t, `SELECT 1 FROM "wharf".queue JOIN "wharf".x`, Render(`SELECT 1 FROM {schema}.queue JOIN {schema}.x`, "wharf"))
	require.Equal(t, "wharf", Or(""))
	require.Equal(t, "w2", Or("w2"))
}
