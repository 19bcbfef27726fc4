package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// postWith is a same-origin form POST carrying tok.
func postWith(tok string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/dlq/1/replay", strings.NewReader(url.Values{csrfField: {tok}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	return r
}

func TestCSRFTokenExpiresAfterItsTTL(t *testing.T) {
	t.Parallel()
	c, err := newCSRF([]byte(strings.Repeat("k", MinCSRFKeyBytes)), time.Hour, nil)
	require.NoError(t, err)
	now := time.Unix(1_700_000_000, 0)
	c.now = func() time.Time { return now }
	tok := c.token()

	require.NoError(t, c.check(postWith(tok)))
	now = now.Add(time.Hour)
	require.NoError(t, c.check(postWith(tok)), "valid for exactly its TTL")
	now = now.Add(time.Second)
	require.ErrorContains(t, c.check(postWith(tok)), "expired")
	now = time.Unix(1_700_000_000, 0).Add(-2 * time.Minute)
	require.ErrorContains(t, c.check(postWith(tok)), "expired", "a token from the future is refused too")

	// Another key's token, however fresh, is not valid.
	other, err := newCSRF([]byte(strings.Repeat("o", MinCSRFKeyBytes)), time.Hour, nil)
	require.NoError(t, err)
	require.ErrorIs(t, c.check(postWith(other.token())), errCSRF)
}

func TestTrustedOriginsMayPost(t *testing.T) {
	t.Parallel()
	c, err := newCSRF([]byte(strings.Repeat("k", MinCSRFKeyBytes)), time.Hour, []string{"https://ops.example.com"})
	require.NoError(t, err)
	r := postWith(c.token())
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	r.Header.Set("Origin", "https://ops.example.com")
	require.NoError(t, c.check(r))
	r = postWith(c.token())
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	r.Header.Set("Origin", "https://evil.example.com")
	require.ErrorIs(t, c.check(r), errCSRF)
}
