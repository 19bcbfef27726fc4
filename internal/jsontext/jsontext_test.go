package jsontext_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/jsontext"
)

func TestSkipSpace(t *testing.T) {
	for _, tc := range []struct {
		data string
		pos  int
		want int
	}{
		{"", 0, 0},
		{" \t\n\rx", 0, 4},
		{"x  y", 1, 3},
		{"   ", 1, 3},
		{"\v x", 0, 0}, // vertical tab is not JSON whitespace
		{"x", 1, 1},
	} {
		require.Equal(t, tc.want, jsontext.SkipSpace([]byte(tc.data), tc.pos), "%q from %d", tc.data, tc.pos)
	}
}
