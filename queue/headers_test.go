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
