package wharf_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// The edge tests send malformed requests over real HTTP to Pipeline.Handler
// and check the answer of each and that none of them stored anything
// (invariant 7). Their table is in RELIABILITY.md, "Bad input at the edge".

const (
	edgeMaxBody   = 4096
	edgeSWSecret  = "whsec_ZWRnZS10ZXN0cy1zdGFuZGFyZC13ZWJob29rcw=="
	edgeStripeKey = "whsec_edge_stripe"
	edgeGitHubKey = "edge-github-secret"
	edgeShopKey   = "edge-shopify-secret"
	edgeSlackKey  = "edge-slack-secret"
	edgeHMACKey   = "edge-generic-secret"
)

// edgeHMAC is the generic source's scheme: base64 HMAC-SHA256 of the body.
func edgeHMAC() *wharf.HMACVerifier {
	v := wharf.HMAC("X-Signature", edgeHMACKey)
	v.Encoding = wharf.Base64Encoding
	return v
}

// edgeServer is a Pipeline with one source per verifier, each mounted
// without a method pattern (so the handler's own 405 is what answers),
// behind a real HTTP server.
type edgeServer struct {
	pool *pgxpool.Pool
	srv  *httptest.Server
}

func newEdgeServer(t *testing.T, cfg wharf.Config) *edgeServer {
	t.Helper()
	pool := dbtest.Pool(t)
	cfg.MaxBodyBytes = edgeMaxBody
	if cfg.AckDeadline == 0 {
		cfg.AckDeadline = harnessAckDeadline // as newHarness, for the same reason
	}
	p, err := wharf.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("sw", wharf.StandardWebhooks(edgeSWSecret)))
	require.NoError(t, p.Source("stripe", wharf.Stripe(edgeStripeKey)))
	require.NoError(t, p.Source("github", wharf.GitHub(edgeGitHubKey)))
	require.NoError(t, p.Source("shopify", wharf.Shopify(edgeShopKey)))
	require.NoError(t, p.Source("slack", wharf.Slack(edgeSlackKey)))
	require.NoError(t, p.Source("generic", edgeHMAC(), wharf.SourceFields{
		ID: wharf.FromJSON("id"), Type: wharf.FromJSON("type"), OrderingKey: wharf.FromJSON("key"),
	}))
	mux := http.NewServeMux()
	for _, name := range []string{"sw", "stripe", "github", "shopify", "slack", "generic"} {
		mux.Handle("/"+name, p.Handler(name))
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &edgeServer{pool: pool, srv: srv}
}

// do sends one request with the Go client and returns the status.
func (e *edgeServer) do(t *testing.T, method, source string, header http.Header, body io.Reader) int {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+"/"+source, body)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := e.srv.Client().Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode
}

// rows counts the rows of every table an ingested event could reach.
func (e *edgeServer) rows(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, table := range []string{"queue", "queue_payloads", "dead_letters", "processed_events"} {
		var n int
		require.NoError(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM wharf."+table).Scan(&n))
		out[table] = n
	}
	return out
}

func (e *edgeServer) requireNoRows(t *testing.T) {
	t.Helper()
	require.Equal(t, map[string]int{"queue": 0, "queue_payloads": 0, "dead_letters": 0, "processed_events": 0}, e.rows(t))
}

// raw sends text as it is on a new connection (for requests the Go client
// refuses to build) and returns the status of the answer. write runs in
// its own goroutine, so that a server that answers before reading
// everything is seen answering.
func (e *edgeServer) raw(t *testing.T, write func(w io.Writer) error) int {
	t.Helper()
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	// A guard, not a wait: a server that never answers fails the test
	// instead of hanging it.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	go func() { _ = write(conn) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err, "the server did not answer")
	_ = resp.Body.Close()
	return resp.StatusCode
}

// swHeader signs body for the "sw" source with webhook-id id.
func swHeader(id string, body []byte) http.Header {
	return wharf.SignStandardWebhooks(edgeSWSecret, id, time.Now(), body)
}

func withHeader(h http.Header, kv ...string) http.Header {
	for i := 0; i < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// edgeCase is one malformed request and the status it must get.
type edgeCase struct {
	name   string
	method string // POST when empty
	source string
	header http.Header
	body   []byte
	want   int
}

// edgeCases are the malformed requests sent through the Go client.
func edgeCases() []edgeCase {
	event := []byte(`{"id":"evt_edge","type":"order.paid"}`)
	long := strings.Repeat("i", 256)
	zero32 := make([]byte, 32)
	hexOf := func(b []byte) string { return fmt.Sprintf("%x", b) }
	return []edgeCase{
		// Wrong method: the handler's own 405, before anything else.
		{name: "GET", method: http.MethodGet, source: "sw", header: swHeader("m1", nil), want: 405},
		{name: "PUT with a valid signature", method: http.MethodPut, source: "sw", header: swHeader("m2", event), body: event, want: 405},
		{name: "DELETE", method: http.MethodDelete, source: "stripe", want: 405},

		// Missing signatures.
		{name: "standard webhooks without headers", source: "sw", body: event, want: 401},
		{name: "stripe without Stripe-Signature", source: "stripe", body: event, want: 401},
		{name: "github without X-Hub-Signature-256", source: "github", header: withHeader(http.Header{}, "X-GitHub-Delivery", "d1", "X-GitHub-Event", "push"), body: event, want: 401},
		{name: "github with only the SHA-1 signature", source: "github", header: withHeader(http.Header{}, "X-Hub-Signature", "sha1="+strings.Repeat("0", 40)), body: event, want: 401},
		{name: "shopify without X-Shopify-Hmac-Sha256", source: "shopify", header: withHeader(http.Header{}, "X-Shopify-Topic", "orders/create", "X-Shopify-Event-Id", "e1"), body: event, want: 401},
		{name: "slack without a timestamp", source: "slack", header: withHeader(wharf.SignSlack(edgeSlackKey, time.Now(), event), "X-Slack-Request-Timestamp", ""), body: event, want: 401},
		{name: "generic without X-Signature", source: "generic", body: event, want: 401},
		{name: "standard webhooks without webhook-id", source: "sw", header: withHeader(swHeader("x", event), "Webhook-Id", ""), body: event, want: 401},
		{name: "stale timestamp", source: "sw", header: wharf.SignStandardWebhooks(edgeSWSecret, "old", time.Now().Add(-time.Hour), event), body: event, want: 401},

		// Wrong encodings.
		{name: "standard webhooks signature not base64", source: "sw", header: withHeader(swHeader("e1", event), "Webhook-Signature", "v1,!!!!not*base64!!!!"), body: event, want: 401},
		{name: "standard webhooks signature in hex", source: "sw", header: withHeader(swHeader("e2", event), "Webhook-Signature", "v1,"+hexOf(zero32)), body: event, want: 401},
		{name: "stripe v1 not hex", source: "stripe", header: withHeader(http.Header{}, "Stripe-Signature", fmt.Sprintf("t=%d,v1=%s", time.Now().Unix(), strings.Repeat("zz", 32))), body: event, want: 401},
		{name: "stripe v1 in base64", source: "stripe", header: withHeader(http.Header{}, "Stripe-Signature", fmt.Sprintf("t=%d,v1=%s", time.Now().Unix(), base64.StdEncoding.EncodeToString(zero32))), body: event, want: 401},
		{name: "stripe timestamp not a number", source: "stripe", header: withHeader(http.Header{}, "Stripe-Signature", "t=yesterday,v1="+hexOf(zero32)), body: event, want: 401},
		{name: "github signature not hex", source: "github", header: withHeader(http.Header{}, "X-Hub-Signature-256", "sha256="+strings.Repeat("zz", 32)), body: event, want: 401},
		{name: "shopify signature in hex", source: "shopify", header: withHeader(http.Header{}, "X-Shopify-Hmac-Sha256", hexOf(zero32)), body: event, want: 401},
		{name: "slack signature truncated", source: "slack", header: withHeader(wharf.SignSlack(edgeSlackKey, time.Now(), event), "X-Slack-Signature", "v0=abc"), body: event, want: 401},
		{name: "generic signature not base64", source: "generic", header: withHeader(http.Header{}, "X-Signature", "%%%"), body: event, want: 401},

		// Bodies that are not what the source needs, signed.
		{name: "non-UTF-8 body, unsigned", source: "sw", body: []byte{0xff, 0xfe, 0x00, 0x80}, want: 401},
		{name: "non-UTF-8 body, signed (not JSON)", source: "sw", header: swHeader("b1", []byte{0xff, 0xfe, 0x00, 0x80}), body: []byte{0xff, 0xfe, 0x00, 0x80}, want: 400},
		{name: "empty body, signed", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), nil), want: 400},
		{name: "JSON array, signed", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte(`[{"id":"evt_1","type":"t"}]`)), body: []byte(`[{"id":"evt_1","type":"t"}]`), want: 400},
		{name: "JSON string, signed", source: "sw", header: swHeader("j2", []byte(`"order.paid"`)), body: []byte(`"order.paid"`), want: 400},
		{name: "JSON null, signed", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte(`null`)), body: []byte(`null`), want: 400},
		{name: "truncated JSON, signed", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), event[:20]), body: event[:20], want: 400},
		{name: "JSON without a type, signed", source: "sw", header: swHeader("j3", []byte(`{"data":{}}`)), body: []byte(`{"data":{}}`), want: 400},
		{name: "type an object, signed", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte(`{"id":"evt_2","type":{"a":1}}`)), body: []byte(`{"id":"evt_2","type":{"a":1}}`), want: 400},
		{name: "github without X-GitHub-Event, signed", source: "github", header: withHeader(wharf.SignGitHub(edgeGitHubKey, event), "X-GitHub-Delivery", "d2"), body: event, want: 400},

		// Ids, types and ordering keys the queue cannot store, signed.
		{name: "id with a NUL (JSON escape)", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte(`{"id":"evt\u0000x","type":"t"}`)), body: []byte(`{"id":"evt\u0000x","type":"t"}`), want: 400},
		{name: "type with a NUL (JSON escape)", source: "sw", header: swHeader("n2", []byte(`{"type":"a\u0000"}`)), body: []byte(`{"type":"a\u0000"}`), want: 400},
		{name: "id not UTF-8 (header)", source: "sw", header: swHeader("id-\xff\xfe", event), body: event, want: 400},
		{name: "type not UTF-8 (JSON)", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte("{\"id\":\"evt_3\",\"type\":\"\xc3\x28\"}")), body: []byte("{\"id\":\"evt_3\",\"type\":\"\xc3\x28\"}"), want: 400},
		{name: "type a lone surrogate escape", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte(`{"id":"evt_4","type":"\ud800"}`)), body: []byte(`{"id":"evt_4","type":"\ud800"}`), want: 400},
		{name: "id a lone surrogate escape", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte(`{"id":"evt_\udfff","type":"t"}`)), body: []byte(`{"id":"evt_\udfff","type":"t"}`), want: 400},
		{name: "id of 256 bytes (header)", source: "sw", header: swHeader(long, event), body: event, want: 400},
		{name: "type of 256 bytes (JSON)", source: "stripe", header: wharf.SignStripe(edgeStripeKey, time.Now(), []byte(`{"id":"evt_5","type":"`+long+`"}`)), body: []byte(`{"id":"evt_5","type":"` + long + `"}`), want: 400},
		{name: "ordering key of 256 bytes (JSON)", source: "generic", header: wharf.SignHMAC(edgeHMAC(), edgeHMACKey, time.Now(), []byte(`{"id":"k1","type":"t","key":"`+long+`"}`)), body: []byte(`{"id":"k1","type":"t","key":"` + long + `"}`), want: 400},
		{name: "type * (reserved)", source: "generic", header: wharf.SignHMAC(edgeHMAC(), edgeHMACKey, time.Now(), []byte(`{"id":"k2","type":"*"}`)), body: []byte(`{"id":"k2","type":"*"}`), want: 400},
		{name: "id a boolean", source: "generic", header: wharf.SignHMAC(edgeHMAC(), edgeHMACKey, time.Now(), []byte(`{"id":true,"type":"t"}`)), body: []byte(`{"id":true,"type":"t"}`), want: 400},

		// Size.
		{name: "one byte over the limit, unsigned", source: "sw", body: bytes.Repeat([]byte("x"), edgeMaxBody+1), want: 413},
		{name: "one byte over the limit, signed", source: "sw", header: swHeader("big", bytes.Repeat([]byte("x"), edgeMaxBody+1)), body: bytes.Repeat([]byte("x"), edgeMaxBody+1), want: 413},
	}
}

// TestEdgeMalformedRequestsChangeNothing sends each malformed request of
// edgeCases over real HTTP: each gets its status, and afterwards the
// queue, its payloads, the dead letters and the processed events are all
// empty.
func TestEdgeMalformedRequestsChangeNothing(t *testing.T) {
	t.Parallel()
	e := newEdgeServer(t, wharf.Config{})
	for _, c := range edgeCases() {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodPost
			}
			require.Equal(t, c.want, e.do(t, method, c.source, c.header, bytes.NewReader(c.body)))
		})
	}
	e.requireNoRows(t)
}

// TestEdgeBodyAtTheLimit: a body of exactly MaxBodyBytes is accepted, one
// byte more is refused with 413 whether the length is declared or the
// body is chunked, and non-UTF-8 bytes outside the identity are stored
// verbatim (invariant 6).
func TestEdgeBodyAtTheLimit(t *testing.T) {
	t.Parallel()
	e := newEdgeServer(t, wharf.Config{})
	fill := func(n int) []byte {
		b := []byte(`{"type":"order.paid","pad":"` + "\xff\xfe")
		b = append(b, bytes.Repeat([]byte("x"), n-len(b)-2)...)
		return append(b, `"}`...)
	}
	atLimit := fill(edgeMaxBody)
	require.Len(t, atLimit, edgeMaxBody)
	require.Equal(t, http.StatusAccepted, e.do(t, http.MethodPost, "sw", swHeader("at-limit", atLimit), bytes.NewReader(atLimit)))
	var stored []byte
	require.NoError(t, e.pool.QueryRow(context.Background(),
		`SELECT body FROM wharf.queue_payloads WHERE source = 'sw' AND event_id = 'at-limit'`).Scan(&stored))
	require.Equal(t, atLimit, stored, "stored verbatim")

	over := fill(edgeMaxBody + 1)
	require.Equal(t, http.StatusRequestEntityTooLarge, e.do(t, http.MethodPost, "sw", swHeader("over", over), bytes.NewReader(over)))
	// Chunked: no Content-Length to refuse up front.
	require.Equal(t, http.StatusRequestEntityTooLarge, e.do(t, http.MethodPost, "sw", swHeader("over-chunked", over), io.MultiReader(bytes.NewReader(over))))
	require.Equal(t, map[string]int{"queue": 1, "queue_payloads": 1, "dead_letters": 0, "processed_events": 0}, e.rows(t))
}

// TestEdgeSlowBody: a sender that stops sending its body, or trickles it,
// gets 408 once Config.BodyReadTimeout has passed, and nothing is stored.
func TestEdgeSlowBody(t *testing.T) {
	t.Parallel()
	e := newEdgeServer(t, wharf.Config{BodyReadTimeout: 300 * time.Millisecond})
	body := []byte(`{"type":"order.paid"}`)
	head := func(w io.Writer, id string) error {
		return slowRequestHead(w, id, body, 1<<20)
	}

	t.Run("stalled", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, http.StatusRequestTimeout, e.raw(t, func(w io.Writer) error { return head(w, "stalled") }))
	})
	t.Run("trickled", func(t *testing.T) {
		t.Parallel()
		stop := make(chan struct{})
		defer close(stop)
		require.Equal(t, http.StatusRequestTimeout, e.raw(t, func(w io.Writer) error {
			if err := head(w, "trickled"); err != nil {
				return err
			}
			// One byte every 20ms: never idle long, never done.
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return nil
				case <-tick.C:
					if _, err := w.Write([]byte("x")); err != nil {
						return err
					}
				}
			}
		}))
	})
	t.Run("a prompt body on the same server", func(t *testing.T) {
		t.Parallel()
		// The timeout is per request: a normal request is not affected.
		bad := withHeader(swHeader("prompt", body), "Webhook-Signature", "v1,AAAA")
		require.Equal(t, http.StatusUnauthorized, e.do(t, http.MethodPost, "sw", bad, bytes.NewReader(body)))
	})
	t.Cleanup(func() { e.requireNoRows(t) })
}

// slowRequestHead writes a signed request for body with event id id that
// declares a body of contentLength bytes and sends only its first 5.
func slowRequestHead(w io.Writer, id string, body []byte, contentLength int) error {
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST /sw HTTP/1.1\r\nHost: edge\r\nContent-Length: %d\r\n", contentLength)
	for k, v := range swHeader(id, body) {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v[0])
	}
	req.WriteString("\r\n")
	req.Write(body[:5])
	_, err := w.Write(req.Bytes())
	return err
}

// A stalled body that declares little more than it sent (under the 256
// KiB net/http reads off a request before answering it) still gets its 408,
// and a chunked body over the limit its 413, with or without an Observer:
// the connection is closed instead of read to its end (before the fix,
// the server waited on the rest for ever and never answered).
func TestEdgeUnreadBodyClosesTheConnection(t *testing.T) {
	t.Parallel()
	body := []byte(`{"type":"order.paid"}`)
	for _, observed := range []bool{false, true} {
		t.Run(fmt.Sprintf("observer=%t", observed), func(t *testing.T) {
			t.Parallel()
			cfg := wharf.Config{BodyReadTimeout: 300 * time.Millisecond}
			if observed {
				cfg.Observer = &recorder{}
			}
			e := newEdgeServer(t, cfg)
			require.Equal(t, http.StatusRequestTimeout, e.raw(t, func(w io.Writer) error {
				return slowRequestHead(w, "short", body, 2000)
			}))
			require.Equal(t, http.StatusRequestEntityTooLarge, e.raw(t, func(w io.Writer) error {
				head := "POST /sw HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n"
				_, err := fmt.Fprintf(w, "%s%x\r\n%s\r\n", head, edgeMaxBody+1, strings.Repeat("x", edgeMaxBody+1))
				return err // and no final chunk
			}))
			e.requireNoRows(t)
		})
	}
}

// TestEdgeHugeAndInvalidHeaders: net/http itself refuses a request whose
// headers exceed http.DefaultMaxHeaderBytes (1 MiB, plus 4 KiB of slack)
// with 431, and a header value holding a control byte with 400, before the
// handler runs; a 1 MiB header that fits reaches the handler, which refuses
// the unsigned request with 401. Nothing is stored.
func TestEdgeHugeAndInvalidHeaders(t *testing.T) {
	t.Parallel()
	e := newEdgeServer(t, wharf.Config{})
	body := []byte(`{"type":"order.paid"}`)
	send := func(name, value string) int {
		return e.raw(t, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "POST /sw HTTP/1.1\r\nHost: edge\r\nContent-Length: %d\r\n%s: %s\r\n\r\n%s", len(body), name, value, body)
			return err
		})
	}
	require.Equal(t, http.StatusUnauthorized, send("X-Padding", strings.Repeat("a", 1<<20)), "1 MiB fits the default limit")
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, send("X-Padding", strings.Repeat("a", 2<<20)))
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, send("Webhook-Signature", "v1,"+strings.Repeat("A", 2<<20)))
	require.Equal(t, http.StatusBadRequest, send("Webhook-Id", "evt\x00nul"), "NUL in a header value")
	require.Equal(t, http.StatusBadRequest, send("Webhook-Id", "evt\x01ctl"), "control byte in a header value")
	require.Equal(t, http.StatusBadRequest, send("Bad Name", "x"), "space in a header name")

	// A signed request carrying a 1 MiB header: the signature holds, the
	// header is too big to store with the event (keptHeaders drops it),
	// and a 1 MiB signature header is refused after at most 32 candidates.
	signed := swHeader("big-header", body)
	signed.Set("Webhook-Signature", strings.Repeat("v1,AAAA ", (1<<20)/8))
	require.Equal(t, http.StatusUnauthorized, e.do(t, http.MethodPost, "sw", signed, bytes.NewReader(body)))
	e.requireNoRows(t)
}
