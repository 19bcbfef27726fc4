package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBasePath(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/ops/wharf/dlq/3?x=1", nil)
	var got string
	http.StripPrefix("/ops/wharf", http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = basePath(r) })).
		ServeHTTP(httptest.NewRecorder(), r)
	require.Equal(t, "/ops/wharf", got)
	require.Equal(t, "", basePath(httptest.NewRequest(http.MethodGet, "/dlq/3", nil)), "mounted at the root")
	require.Equal(t, "", basePath(&http.Request{URL: &url.URL{Path: "/dlq"}}), "built by hand, no RequestURI")
}

func TestRoundDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		850*time.Millisecond + 400*time.Microsecond:  "850ms",
		42*time.Second + 300*time.Millisecond:        "42s",
		3*time.Minute + 12*time.Second:               "3m12s",
		5*time.Hour + 4*time.Minute + 10*time.Second: "5h4m",
		74 * time.Hour: "3d2h",
	} {
		require.Equal(t, want, roundDuration(d), d.String())
	}
}
