package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
)

func TestQuickstart(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out bytes.Buffer
	require.NoError(t, run(ctx, url, &out))
	got := out.String()
	require.Contains(t, got, "(duplicate: true)", "the retried event is reported as a duplicate")
	require.Equal(t, 5, bytes.Count(out.Bytes(), []byte("processed ")), got)
	require.Contains(t, got, "invoices paid: 5", "each invoice paid exactly once")

	// Running it again on the same database works: migrations are a no-op.
	out.Reset()
	require.NoError(t, run(ctx, url, &out))
	require.Contains(t, out.String(), "invoices paid: 5")
}
