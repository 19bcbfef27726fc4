package wharf_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/queue"
)

const identityBody = `{
	"id": "evt_1",
	"type": "order.created",
	"data": {"object": {"customer": "cus_1", "amount": 1250, "neg": -3, "ratio": 0.5, "exp": 1.5e3,
		"big": 820982911946154508, "paid": true, "note": null, "empty": "", "nested": {"a": [1, 2]}}},
	"items": [{"id": "it_0"}, {"id": "it_1", "tags": ["x", "y"]}],
	"metadata": {"order.id": "ord_9", "back\\slash": "bs", "caf\u00e9": "unicode key"},
	"escaped": "caf\u00e9 \"quoted\" \/ tab\t",
	"\u0069dx": "escaped key",
	"dup": "first", "dup": "last",
	"nul": "a\u0000b",
	"long": "` + "%LONG%" + `"
}`

var longValue = strings.Repeat("é", 128) // 256 bytes

func identityTestBody() []byte {
	return []byte(strings.Replace(identityBody, "%LONG%", longValue, 1))
}

func TestIdentifyFromJSON(t *testing.T) {
	t.Parallel()
	body := identityTestBody()
	base := wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromJSON("type")}
	key := func(path string) (string, error) {
		f := base
		f.OrderingKey = wharf.FromJSON(path)
		ident, err := wharf.IdentifyWith(f, nil, http.Header{}, body)
		return ident.OrderingKey, err
	}

	for path, want := range map[string]string{
		"data.object.customer": "cus_1",
		"data.object.amount":   "1250",
		"data.object.neg":      "-3",
		"data.object.ratio":    "0.5",
		"data.object.exp":      "1.5e3",
		"data.object.big":      "820982911946154508",
		"items.1.id":           "it_1",
		"items.0.id":           "it_0",
		"items.1.tags.1":       "y",
		`metadata.order\.id`:   "ord_9",
		`metadata.back\\slash`: "bs",
		"metadata.café":        "unicode key",
		"escaped":              "café \"quoted\" / tab\t",
		"idx":                  "escaped key",
		"dup":                  "last",
		// Missing: no ordering key, not an error.
		"data.object.note":        "",
		"data.object.empty":       "",
		"data.object.nothing":     "",
		"items.2.id":              "",
		"items.x":                 "",
		"id.deeper":               "",
		"data.object.nested.a.01": "",
	} {
		got, err := key(path)
		require.NoError(t, err, path)
		require.Equal(t, want, got, path)
	}

	for path, reason := range map[string]string{
		"data.object.paid":   "is a boolean, not a string or a number",
		"data.object.nested": "is an object, not a string or a number",
		"items":              "is an array, not a string or a number",
		"nul":                "contains a NUL byte",
		"long":               "is longer than 255 bytes",
	} {
		_, err := key(path)
		require.ErrorIs(t, err, wharf.ErrInvalidIdentity, path)
		var ie *wharf.IdentityError
		require.ErrorAs(t, err, &ie, path)
		require.Equal(t, "ordering key", ie.Field)
		require.Equal(t, `JSON "`+path+`"`, ie.From)
		require.Equal(t, reason, ie.Reason, path)
	}

	ident, err := wharf.IdentifyWith(base, nil, nil, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "evt_1", Type: "order.created"}, ident)
}

func TestIdentifyValidation(t *testing.T) {
	t.Parallel()
	fields := wharf.SourceFields{ID: wharf.FromHeader("X-Id"), Type: wharf.FromHeader("X-Type"), OrderingKey: wharf.FromHeader("X-Key")}
	identify := func(id, typ, key string) (wharf.Identity, error) {
		h := http.Header{}
		h.Set("X-Id", id)
		h.Set("X-Type", typ)
		h.Set("X-Key", key)
		return wharf.IdentifyWith(fields, nil, h, nil)
	}

	ident, err := identify(strings.Repeat("i", queue.MaxIDLen), strings.Repeat("t", queue.MaxTypeLen), strings.Repeat("k", queue.MaxOrderingKeyLen))
	require.NoError(t, err, "at the limits")
	require.Len(t, ident.ID, queue.MaxIDLen)

	ident, err = identify("id", "type", "")
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "id", Type: "type"}, ident)

	for name, c := range map[string]struct {
		id, typ, key string
		want         string
	}{
		"missing id":          {"", "t", "", `id from header "X-Id": is missing`},
		"missing type":        {"i", "", "", `type from header "X-Type": is missing`},
		"NUL in id":           {"a\x00b", "t", "", `id from header "X-Id": contains a NUL byte`},
		"NUL in type":         {"i", "t\x00", "", `type from header "X-Type": contains a NUL byte`},
		"NUL in ordering key": {"i", "t", "\x00", `ordering key from header "X-Key": contains a NUL byte`},
		"invalid UTF-8 id":    {"\xff\xfe", "t", "", `id from header "X-Id": is not valid UTF-8`},
		"invalid UTF-8 type":  {"i", "caf\xe9", "", `type from header "X-Type": is not valid UTF-8`},
		"invalid UTF-8 key":   {"i", "t", "\xc3", `ordering key from header "X-Key": is not valid UTF-8`},
		"over-long id":        {strings.Repeat("i", queue.MaxIDLen+1), "t", "", `id from header "X-Id": is longer than 255 bytes`},
		"over-long type":      {"i", strings.Repeat("t", queue.MaxTypeLen+1), "", `type from header "X-Type": is longer than 255 bytes`},
		"over-long key":       {"i", "t", strings.Repeat("k", queue.MaxOrderingKeyLen+1), `ordering key from header "X-Key": is longer than 255 bytes`},
		"any type":            {"i", queue.AnyType, "", `type from header "X-Type": "*" is reserved to mean any type`},
	} {
		_, err := identify(c.id, c.typ, c.key)
		require.ErrorIs(t, err, wharf.ErrInvalidIdentity, name)
		require.EqualError(t, err, "wharf: invalid event identity: "+c.want, name)
	}

	// Invalid UTF-8 inside a JSON string is refused, not replaced.
	_, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromJSON("t")}, nil, nil, []byte("{\"id\":\"a\xffb\",\"t\":\"x\"}"))
	require.EqualError(t, err, `wharf: invalid event identity: id from JSON "id": is not valid UTF-8`)
}

func TestIdentifyOverridesDefaults(t *testing.T) {
	t.Parallel()
	v := wharf.Stripe("whsec_x")
	h := http.Header{}
	h.Set("X-Request-Id", "req_1")
	body := []byte(`{"id":"evt_1","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}`)

	ident, err := wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("x-request-id")}, v, h, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "req_1", Type: "invoice.paid"}, ident)

	ident, err = wharf.IdentifyWith(wharf.SourceFields{Type: wharf.FromJSON("data.object.customer")}, v, h, body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "evt_1", Type: "cus_1"}, ident)

	// A default that would fail does not matter when it is overridden.
	ident, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("X-Request-Id")}, v, h, []byte(`{"type":"t"}`))
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "req_1", Type: "t"}, ident)

	// An override that fails is reported as the override.
	_, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("X-Missing")}, v, h, body)
	require.EqualError(t, err, `wharf: invalid event identity: id from header "X-Missing": is missing`)
}

// userIdentifier is an Identifier from outside this package.
type userIdentifier struct {
	ident wharf.Identity
	err   error
	calls int
}

func (u *userIdentifier) Identify(http.Header, []byte) (wharf.Identity, error) {
	u.calls++
	return u.ident, u.err
}

func TestIdentifyWithOtherIdentifier(t *testing.T) {
	t.Parallel()
	h := http.Header{"X-Id": {"hdr"}}
	u := &userIdentifier{ident: wharf.Identity{ID: "u1", Type: "ut", OrderingKey: "uk"}}
	ident, err := wharf.IdentifyWith(wharf.SourceFields{}, u, h, nil)
	require.NoError(t, err)
	require.Equal(t, u.ident, ident)

	ident, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("X-Id")}, u, h, nil)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "hdr", Type: "ut", OrderingKey: "uk"}, ident)
	require.Equal(t, 2, u.calls)

	// Not called when every field is overridden.
	all := wharf.SourceFields{ID: wharf.FromHeader("X-Id"), Type: wharf.FromHeader("X-Id"), OrderingKey: wharf.FromHeader("X-Id")}
	_, err = wharf.IdentifyWith(all, u, h, nil)
	require.NoError(t, err)
	require.Equal(t, 2, u.calls)

	// Its errors are identity errors.
	u.err = errors.New("no id in this body")
	_, err = wharf.IdentifyWith(wharf.SourceFields{}, u, h, nil)
	require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
	require.ErrorIs(t, err, u.err)
	// ...unless ID and Type are both overridden.
	_, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("X-Id"), Type: wharf.FromHeader("X-Id")}, u, h, nil)
	require.NoError(t, err)

	// Its results are validated too.
	u.err = nil
	u.ident = wharf.Identity{ID: "a\x00", Type: "t"}
	_, err = wharf.IdentifyWith(wharf.SourceFields{}, u, h, nil)
	require.EqualError(t, err, "wharf: invalid event identity: id: contains a NUL byte")

	// Without a fallback, ID and Type are required.
	_, err = wharf.IdentifyWith(wharf.SourceFields{ID: wharf.FromHeader("X-Id")}, nil, h, nil)
	require.EqualError(t, err, "wharf: invalid event identity: type: the source has no default; set SourceFields.Type")
}

func TestIdentityFields(t *testing.T) {
	t.Parallel()
	require.True(t, wharf.Field{}.IsZero())
	require.False(t, wharf.FromHeader("X").IsZero())
	require.Equal(t, `header "X-GitHub-Delivery"`, wharf.FromHeader("X-GitHub-Delivery").String())
	require.Equal(t, `JSON "data.object.customer"`, wharf.FromJSON("data.object.customer").String())
	require.Equal(t, "default", wharf.Field{}.String())

	for name, f := range map[string]wharf.Field{
		"empty path":         wharf.FromJSON(""),
		"empty segment":      wharf.FromJSON("a..b"),
		"trailing dot":       wharf.FromJSON("a."),
		"leading dot":        wharf.FromJSON(".a"),
		"trailing backslash": wharf.FromJSON(`a\`),
		"unknown escape":     wharf.FromJSON(`a\x`),
		"empty header":       wharf.FromHeader(" "),
	} {
		_, err := wharf.IdentifyWith(wharf.SourceFields{ID: f, Type: wharf.FromHeader("T")}, nil, http.Header{"T": {"t"}}, []byte(`{}`))
		require.ErrorIs(t, err, wharf.ErrInvalidSource, name)
		require.NotErrorIs(t, err, wharf.ErrInvalidIdentity, name)
	}
}

func BenchmarkIdentify(b *testing.B) {
	v := wharf.Stripe("whsec_x")
	fields := wharf.SourceFields{OrderingKey: wharf.FromJSON("data.object.customer")}
	b.SetBytes(int64(len(body1K)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wharf.IdentifyWith(fields, v, nil, body1K); err != nil {
			b.Fatal(err)
		}
	}
}
