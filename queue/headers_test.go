package queue

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// headerSamples are stored headers as jsonb prints them and as Go encodes
// them, and inputs the direct scan must hand to encoding/json: escapes,
// nulls, nesting, invalid UTF-8, control characters, trailing data.
var headerSamples = []string{
	`{"Webhook-Id": ["msg_1"], "Content-Type": ["application/json"], "Webhook-Signature": ["v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= v1,x"]}`,
	`{"X-A":["1","2"],"X-B":[]}`,
	`{}`,
	` { "A" : [ "x" , "y" ] } `,
	`{"A": ["caf\u00e9"]}`,
	`{"A": ["a \"quoted\" value"]}`,
	`{"A\\B": ["x"]}`,
	`{"A": [null]}`,
	`{"A": null}`,
	`null`,
	`{"A": ["x"], "A": ["y"]}`,
	`{"A": [["x"]]}`,
	`{"A": [1]}`,
	"{\"A\": [\"\xff\"]}",
	"{\"A\": [\"tab\there\"]}",
	`{"A": ["x"]} trailing`,
	`{"A": ["x"],}`,
	`{"A": ["x",]}`,
	`{"A" ["x"]}`,
	`{"A": ["x"]`,
	`{"A": ["x`,
	`[]`,
	``,
}

// decodeHeaders agrees with json.Unmarshal into an http.Header on every
// sample: the same headers, or an error from both.
func TestDecodeHeadersMatchesEncodingJSON(t *testing.T) {
	scanned := 0
	for _, sample := range headerSamples {
		if _, ok := scanHeaders([]byte(sample)); ok {
			scanned++
		}
		requireSameAsEncodingJSON(t, []byte(sample))
	}
	require.Equal(t, 5, scanned, "samples taken by the direct scan: the first four and the repeated name")
	h, err := decodeHeaders([]byte(headerSamples[0]))
	require.NoError(t, err)
	require.Equal(t, http.Header{
		"Webhook-Id":        {"msg_1"},
		"Content-Type":      {"application/json"},
		"Webhook-Signature": {"v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= v1,x"},
	}, h)
}

func FuzzDecodeHeaders(f *testing.F) {
	for _, sample := range headerSamples {
		f.Add([]byte(sample))
	}
	f.Fuzz(func(t *testing.T, data []byte) { requireSameAsEncodingJSON(t, data) })
}

func requireSameAsEncodingJSON(t *testing.T, data []byte) {
	t.Helper()
	var want http.Header
	wantErr := json.Unmarshal(data, &want)
	got, err := decodeHeaders(data)
	if wantErr != nil {
		require.Error(t, err, "input %q", data)
		return
	}
	require.NoError(t, err, "input %q", data)
	require.Equal(t, want, got, "input %q", data)
}

// encodeHeaders writes what json.Marshal writes, as JSON values (the
// order of names aside), and decodeHeaders reads it back; the samples
// need escapes, HTML-escaped characters, and nil values.
func TestEncodeHeadersMatchesEncodingJSON(t *testing.T) {
	for _, h := range []http.Header{
		{"Webhook-Id": {"msg_1"}, "Content-Type": {"application/json"}, "X-Many": {"a", "b", ""}},
		{},
		{"X-Empty": {}},
		{"X-Nil": nil, "X-A": {"1"}},
		{"X-Quote": {`a "b"`}},
		{"X-Backslash": {`a\b`}},
		{"X-Tab": {"a\tb"}},
		{"X-Html": {"<a href='x'>&</a>"}},
		{"X-Unicode": {"café, 東京"}},
		{"X-Separator": {"a\u2028b"}},
		{"X-\u00e9": {"name not plain ASCII"}},
	} {
		want, err := json.Marshal(h)
		require.NoError(t, err)
		got := encodeHeaders(h)
		var wantValue, gotValue any
		require.NoError(t, json.Unmarshal(want, &wantValue))
		require.NoError(t, json.Unmarshal(got, &gotValue), "%s", got)
		require.Equal(t, wantValue, gotValue, "%s", got)
		decoded, err := decodeHeaders(got)
		require.NoError(t, err)
		require.Equal(t, h, decoded)
	}
	require.Nil(t, encodeHeaders(nil))
}

// BenchmarkEncodeHeaders: encodeHeaders against json.Marshal, its
// baseline, on the headers a signed Standard Webhooks request keeps.
func BenchmarkEncodeHeaders(b *testing.B) {
	h := http.Header{
		"User-Agent": {"Go-http-client/1.1"}, "Webhook-Id": {"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"},
		"Content-Type": {"application/json"}, "Content-Length": {"1024"}, "Accept-Encoding": {"gzip"},
		"Webhook-Signature": {"v1,koeupBTVycId400Cb50Fu6OuGUCJenQmT0r/d7//x/s="}, "Webhook-Timestamp": {"1795927383"},
	}
	b.Run("encodeHeaders", func(b *testing.B) {
		for b.Loop() {
			encodeHeaders(h)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(h)
		}
	})
}
