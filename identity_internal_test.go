package wharf

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// referenceLookup finds the raw value at segs with encoding/json alone.
func referenceLookup(data []byte, segs []string) ([]byte, bool) {
	cur := json.RawMessage(data)
	for _, seg := range segs {
		trimmed := bytes.TrimLeft(cur, " \t\r\n")
		if len(trimmed) == 0 {
			return nil, false
		}
		switch trimmed[0] {
		case '{':
			var obj map[string]json.RawMessage
			if json.Unmarshal(cur, &obj) != nil {
				return nil, false
			}
			next, ok := obj[seg]
			if !ok {
				return nil, false
			}
			cur = next
		case '[':
			idx := arrayIndex(seg)
			var arr []json.RawMessage
			if idx < 0 || json.Unmarshal(cur, &arr) != nil || idx >= len(arr) {
				return nil, false
			}
			cur = arr[idx]
		default:
			return nil, false
		}
	}
	return bytes.TrimSpace(cur), true
}

var fuzzPaths = []string{"a", "b.c", "0", "x.1", "a.b.c.d", "é", `k\.dot`}

// FuzzJSONScan checks the single-pass scanner against encoding/json: the
// same documents are valid, and the same raw value is found at each path
// (duplicate members: the last one, as encoding/json keeps).
func FuzzJSONScan(f *testing.F) {
	for _, seed := range []string{
		`{"a":"x","b":{"c":1}}`, `[1,[2,"three"]]`, `{"x":[0,{"y":1}]}`, `{"a":1,"a":2}`,
		`{"\u0061":"escaped key"}`, `{"k.dot":true}`, `{"é":null}`, ` {"a" : [ ] , "b":{"c":{}}} `,
		`"just a string"`, `-0.5e-7`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}", `{"a":}`, `{"a":1,}`, `[01]`,
		`{"a":"\x"}`, "{\"a\":\"\x01\"}", `{"a":tru}`, `{"b":{"c":1}} x`, `{`, `[[[[[[]]]]]]`, ``, `nul`,
		`{"b":{"c":1},"b":{}}`, `{"b":{"c":1},"b":2}`, `{"x":[0,1],"x":[0]}`, // a repeated member replaces the earlier whole
	} {
		f.Add([]byte(seed))
	}
	paths := make([]jsonPath, len(fuzzPaths))
	for i, p := range fuzzPaths {
		paths[i] = mustJSONPath(p)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := scanJSON(data, paths)
		if valid := json.Valid(data); valid != (err == nil) {
			t.Fatalf("scanJSON(%q) error %v, json.Valid %v", data, err, valid)
		}
		if err != nil {
			return
		}
		for i, p := range paths {
			want, ok := referenceLookup(data, p.segs)
			if ok != got[i].found || !bytes.Equal(want, got[i].raw) {
				t.Fatalf("path %q in %q: scanJSON found %v %q, encoding/json %v %q", p.text, data, got[i].found, got[i].raw, ok, want)
			}
			// Decoded strings agree with encoding/json where the text is valid UTF-8.
			if ok && len(want) > 0 && want[0] == '"' {
				s, reason := got[i].text()
				var ref string
				require.NoError(t, json.Unmarshal(want, &ref))
				if reason == "" && s != ref {
					t.Fatalf("path %q: text %q, encoding/json %q", p.text, s, ref)
				}
			}
		}
	})
}

func TestIdentityScanJSONDepth(t *testing.T) {
	t.Parallel()
	for _, depth := range []int{maxJSONDepth, maxJSONDepth + 1} {
		doc := []byte(strings.Repeat("[", depth) + strings.Repeat("]", depth))
		_, err := scanJSON(doc, []jsonPath{mustJSONPath("0.0")})
		require.Equal(t, json.Valid(doc), err == nil, depth)
	}
}

// countingIdentifier is a defaultIdentifier that reads many paths.
type countingIdentifier struct{ r *identityRequest }

func (c *countingIdentifier) Identify(h http.Header, b []byte) (Identity, error) {
	return identifyDefaults(c, h, b)
}

func (c *countingIdentifier) prepareIdentity(r *identityRequest) {
	c.r = r
	r.addPath(mustJSONPath("id"))
	r.addPath(mustJSONPath("type"))
	r.addPath(mustJSONPath("data.object.customer"))
}

func (c *countingIdentifier) defaultIdentity(r *identityRequest) (id, typ, key fieldValue) {
	for range 3 {
		id = r.json("id", "")
		typ = r.json("type", "")
		key = r.json("data.object.customer", "")
	}
	return id, typ, key
}

func TestIdentifyScansTheBodyOnce(t *testing.T) {
	t.Parallel()
	c := &countingIdentifier{}
	body := []byte(`{"id":"e1","type":"t","data":{"object":{"customer":"c1","account":"acct_1"}}}`)
	ident, err := IdentifyWith(SourceFields{OrderingKey: FromJSON("data.object.account")}, c, nil, body)
	require.NoError(t, err)
	require.Equal(t, Identity{ID: "e1", Type: "t", OrderingKey: "acct_1"}, ident)

	// Every path, the override's and the defaults', was registered before
	// the one scan, which produced a value for each.
	r := c.r
	require.True(t, r.scanned)
	require.Len(t, r.paths, 4)
	require.Len(t, r.values, 4)
	for i := range r.values {
		require.True(t, r.values[i].found, r.paths[i].text)
	}
}

// Not parallel: AllocsPerRun counts every goroutine's allocations.
func TestIdentityScanJSONAllocations(t *testing.T) {
	paths := []jsonPath{mustJSONPath("id"), mustJSONPath("type"), mustJSONPath("data.object.customer")}
	body := []byte(`{"id":"evt_1","type":"invoice.paid","data":{"object":{"id":"in_1","customer":"cus_1","lines":[1,2,3,{"a":"b"}]}}}`)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := scanJSON(body, paths); err != nil {
			t.Fatal(err)
		}
	})
	require.LessOrEqual(t, allocs, 1.0, "only the result slice")
}
