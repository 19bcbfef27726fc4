package migrate

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestEmbeddedMigrationsAreNumberedWithoutGaps(t *testing.T) {
	t.Parallel()
	all := All() // panics on misnamed files or gaps
	require.NotEmpty(t, all)
	for i, m := range all {
		require.Equal(t, i+1, m.Version)
		require.NotEmpty(t, m.Name)
		require.Contains(t, m.SQL, "{schema}", "migration %d must name its tables through the schema placeholder", m.Version)
		require.NotContains(t, strings.ToLower(m.SQL), " wharf.", "migration %d hard-codes the default schema", m.Version)
	}
	require.Equal(t, len(all), Latest())
	require.Len(t, Fingerprint(), 12)
}

func TestLockKeyDependsOnSchema(t *testing.T) {
	t.Parallel()
	require.Equal(t, lockKey("wharf"), lockKey("wharf"))
	require.NotEqual(t, lockKey("wharf"), lockKey("other"))
}
