package dlq_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/dlq"
)

func TestCursorStringRoundTrips(t *testing.T) {
	t.Parallel()
	c := dlq.Cursor{DeadAt: time.Date(2024, 5, 1, 10, 0, 0, 123456000, time.UTC), ID: 42}
	require.Equal(t, "1714557600123456-42", c.String())
	back, err := dlq.ParseCursor(c.String())
	require.NoError(t, err)
	require.True(t, c.DeadAt.Equal(back.DeadAt))
	require.Equal(t, c.ID, back.ID)

	for _, bad := range []string{"", "garbage", "12", "12-", "-3", "12-x", "x-12", "1.5-2"} {
		_, err := dlq.ParseCursor(bad)
		require.ErrorIs(t, err, dlq.ErrInvalidFilter, bad)
	}
}
