package wharf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/wharfhq/wharf/internal/jsontext"
	"github.com/wharfhq/wharf/queue"
)

// Field says where one part of an event's identity comes from when a
// source overrides its provider's default: a request header (FromHeader)
// or a value in the JSON body (FromJSON). The zero Field means "the
// provider's default".
type Field struct {
	kind fieldKind
	name string // header name or path text, as given
	path jsonPath
	err  error // why the field is unusable, for FromJSON paths
}

type fieldKind uint8

const (
	fieldDefault fieldKind = iota
	fieldHeader
	fieldJSON
)

// FromHeader takes the value from the first request header named name
// (case-insensitive, as net/http canonicalizes it). A missing or empty
// header counts as missing.
func FromHeader(name string) Field {
	f := Field{kind: fieldHeader, name: name}
	if strings.TrimSpace(name) == "" {
		f.err = errors.New("FromHeader needs a header name")
	}
	return f
}

// FromJSON takes the value at a dot-separated path in the JSON body, such as
// "id", "type" or "data.object.customer".
//
//   - Each segment names an object member; a segment of decimal digits
//     ("items.0.id") also indexes an array, from 0. A member whose name
//     holds a dot or a backslash is written with a backslash before it:
//     `metadata.order\.id` reads the member "order.id" of "metadata".
//   - A string becomes its decoded text. A number becomes its text exactly
//     as written in the body, never rounded through a float:
//     820982911946154508 gives "820982911946154508", 1.5e3 gives "1.5e3".
//   - A missing member, an index past the end, null and "" count as
//     missing. true, false, an object or an array is unusable
//     (ErrInvalidIdentity).
//   - When a member appears twice in one object, the last one counts, as in
//     encoding/json.
//   - A body that is not valid JSON makes every FromJSON field fail with
//     ErrInvalidIdentity.
//
// For Slack interactions and form-encoded GitHub webhooks (payload=<json>)
// the path reads the payload's JSON. A malformed path (empty, with an
// empty segment, or with a backslash before anything but "." or "\")
// makes the source invalid (ErrInvalidSource).
func FromJSON(path string) Field {
	p, err := parseJSONPath(path)
	return Field{kind: fieldJSON, name: path, path: p, err: err}
}

// IsZero reports whether f is the zero Field, which keeps the provider's
// default.
func (f Field) IsZero() bool { return f.kind == fieldDefault }

// String describes the field for messages: `header "X-GitHub-Delivery"`,
// `JSON "data.object.customer"` or "default".
func (f Field) String() string {
	switch f.kind {
	case fieldHeader:
		return fmt.Sprintf("header %q", f.name)
	case fieldJSON:
		return fmt.Sprintf("JSON %q", f.name)
	}
	return "default"
}

// SourceFields overrides where a source's event id, type and ordering key
// come from. A zero Field keeps the provider's default (each verifier
// documents its own); a source whose verifier has no default (HMACVerifier,
// NoVerifier) must set ID and Type. No provider has a default ordering key:
// without one, a source's events run in parallel.
type SourceFields struct {
	ID          Field
	Type        Field
	OrderingKey Field
}

// validate reports an unusable field, wrapping ErrInvalidSource.
func (s SourceFields) validate() error {
	for _, f := range [...]struct {
		name  string
		field Field
	}{{"ID", s.ID}, {"Type", s.Type}, {"OrderingKey", s.OrderingKey}} {
		if f.field.err != nil {
			return fmt.Errorf("%w: SourceFields.%s: %v", ErrInvalidSource, f.name, f.field.err)
		}
	}
	return nil
}

// IdentityError says which part of an event's identity is missing or
// unusable, and where it was looked for. It wraps ErrInvalidIdentity.
type IdentityError struct {
	Field  string // "id", "type" or "ordering key"
	From   string // where it came from: `header "X-GitHub-Delivery"`, `JSON "type"`, ...
	Reason string // "is missing", "contains a NUL byte", ...
}

func (e *IdentityError) Error() string {
	if e.From == "" {
		return "wharf: invalid event identity: " + e.Field + ": " + e.Reason
	}
	return "wharf: invalid event identity: " + e.Field + " from " + e.From + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrInvalidIdentity) true.
func (e *IdentityError) Unwrap() error { return ErrInvalidIdentity }

// IdentifyWith extracts a verified request's identity: each field of fields
// that is set wins, the others come from fallback (normally the source's
// verifier, whose Identify gives the provider's defaults). fallback may be
// nil when fields sets ID and Type.
//
// With this package's verifiers as fallback, the JSON body is parsed at
// most once, however many fields read it, and a default that fails does
// not matter when its field is overridden. With another Identifier, its
// Identify is called once when some field is not overridden.
//
// The result is validated as the queue would: id and type present, valid
// UTF-8, no NUL byte, at most queue.MaxIDLen, queue.MaxTypeLen and
// queue.MaxOrderingKeyLen bytes, and a type other than queue.AnyType.
// Failures wrap ErrInvalidIdentity (the HTTP layer answers 400); an
// unusable field wraps ErrInvalidSource.
func IdentifyWith(fields SourceFields, fallback Identifier, header http.Header, body []byte) (Identity, error) {
	if err := fields.validate(); err != nil {
		return Identity{}, err
	}
	r := &identityRequest{header: header, body: body, doc: body}
	for _, f := range [...]*Field{&fields.ID, &fields.Type, &fields.OrderingKey} {
		if f.kind == fieldJSON {
			r.addPath(f.path)
		}
	}

	// A verifier of this package prepares the request even when every
	// field is overridden: it says which document FromJSON reads (Slack's
	// interaction payload, not the form around it).
	if d, ok := fallback.(defaultIdentifier); ok {
		d.prepareIdentity(r)
	}
	var id, typ, key fieldValue
	if fields.ID.IsZero() || fields.Type.IsZero() || fields.OrderingKey.IsZero() {
		switch d := fallback.(type) {
		case defaultIdentifier:
			id, typ, key = d.defaultIdentity(r)
		case nil:
			id = fieldValue{reason: "the source has no default; set SourceFields.ID"}
			typ = fieldValue{reason: "the source has no default; set SourceFields.Type"}
		default:
			ident, err := d.Identify(header, body)
			if err != nil {
				if !errors.Is(err, ErrInvalidIdentity) {
					err = fmt.Errorf("%w: %w", ErrInvalidIdentity, err)
				}
				if fields.ID.IsZero() || fields.Type.IsZero() {
					return Identity{}, err
				}
			} else {
				id = fieldValue{value: ident.ID}
				typ = fieldValue{value: ident.Type}
				key = fieldValue{value: ident.OrderingKey}
			}
		}
	}
	if !fields.ID.IsZero() {
		id = r.field(fields.ID)
	}
	if !fields.Type.IsZero() {
		typ = r.field(fields.Type)
	}
	if !fields.OrderingKey.IsZero() {
		key = r.field(fields.OrderingKey)
	}

	if err := id.check("id", queue.MaxIDLen, true); err != nil {
		return Identity{}, err
	}
	if err := typ.check("type", queue.MaxTypeLen, true); err != nil {
		return Identity{}, err
	}
	if typ.value == queue.AnyType {
		return Identity{}, &IdentityError{Field: "type", From: typ.from, Reason: `"*" is reserved to mean any type`}
	}
	if err := key.check("ordering key", queue.MaxOrderingKeyLen, false); err != nil {
		return Identity{}, err
	}
	return Identity{ID: id.value, Type: typ.value, OrderingKey: key.value}, nil
}

// defaultIdentifier is implemented by this package's verifiers: their
// defaults are computed field by field over a shared identityRequest, so the
// JSON body is scanned once and an overridden default cannot fail the
// request.
type defaultIdentifier interface {
	Identifier
	// prepareIdentity registers the JSON paths the defaults read and may
	// point r.doc at another document (Slack's interaction payload).
	prepareIdentity(r *identityRequest)
	defaultIdentity(r *identityRequest) (id, typ, key fieldValue)
}

// needsFields reports whether a source verified by v must set
// SourceFields.ID and Type: v offers no default identity.
func needsFields(v Verifier) bool {
	d, ok := v.(defaultIdentifier)
	if !ok {
		_, isIdentifier := v.(Identifier)
		return !isIdentifier
	}
	id, _, _ := d.defaultIdentity(&identityRequest{})
	return strings.HasPrefix(id.reason, noDefaultReason)
}

// identifyDefaults is the Identify method of every defaultIdentifier.
func identifyDefaults(d defaultIdentifier, header http.Header, body []byte) (Identity, error) {
	return IdentifyWith(SourceFields{}, d, header, body)
}

// fieldValue is one part of an identity before validation: a value, where
// it came from, and why it is unusable (reason non-empty) if it is.
type fieldValue struct {
	value  string
	from   string
	reason string
}

func (v fieldValue) check(field string, maxLen int, required bool) error {
	reason := v.reason
	if reason == "" {
		switch {
		case v.value == "" && required:
			reason = "is missing"
		case len(v.value) > maxLen:
			reason = "is longer than " + strconv.Itoa(maxLen) + " bytes"
		case strings.IndexByte(v.value, 0) >= 0:
			reason = "contains a NUL byte"
		case !utf8.ValidString(v.value):
			reason = "is not valid UTF-8"
		}
	}
	if reason == "" {
		return nil
	}
	return &IdentityError{Field: field, From: v.from, Reason: reason}
}

// identityRequest is one request being identified: the JSON document is
// scanned once, for every registered path at the same time, on first use.
type identityRequest struct {
	header http.Header
	body   []byte
	doc    []byte // the JSON document FromJSON reads: the body, unless a provider says otherwise
	docErr string // when non-empty, there is no JSON document, and why

	paths   []jsonPath
	values  []jsonValue
	scanned bool
	scanErr error

	slack slackRequest // what the Slack verifier learned in prepareIdentity
}

func (r *identityRequest) addPath(p jsonPath) {
	for _, have := range r.paths {
		if have.text == p.text {
			return
		}
	}
	r.paths = append(r.paths, p)
}

// field evaluates an override.
func (r *identityRequest) field(f Field) fieldValue {
	switch f.kind {
	case fieldHeader:
		return fieldValue{value: r.header.Get(f.name), from: f.String()}
	case fieldJSON:
		return r.json(f.path.text, f.String())
	}
	return fieldValue{}
}

// json returns the usable value at a registered path.
func (r *identityRequest) json(path, from string) fieldValue {
	v, err := r.lookup(path)
	if err != nil {
		return fieldValue{from: from, reason: err.Error()}
	}
	s, reason := v.text()
	return fieldValue{value: s, from: from, reason: reason}
}

// lookup returns the raw value at a registered path, scanning the document
// on first use.
func (r *identityRequest) lookup(path string) (jsonValue, error) {
	if r.docErr != "" {
		return jsonValue{}, errors.New(r.docErr)
	}
	if !r.scanned {
		r.scanned = true
		r.values, r.scanErr = scanJSON(r.doc, r.paths)
	}
	if r.scanErr != nil {
		return jsonValue{}, r.scanErr
	}
	for i, p := range r.paths {
		if p.text == path {
			return r.values[i], nil
		}
	}
	// A programming error: every path is registered before the scan.
	return jsonValue{}, fmt.Errorf("path %q was not registered before the scan", path)
}

// jsonPath is a parsed FromJSON path.
type jsonPath struct {
	text  string
	segs  []string
	index []int // segs[i] as an array index, or -1
}

func parseJSONPath(text string) (jsonPath, error) {
	p := jsonPath{text: text}
	if text == "" {
		return p, errors.New("FromJSON needs a path")
	}
	var seg strings.Builder
	flush := func() error {
		if seg.Len() == 0 {
			return fmt.Errorf("FromJSON path %q has an empty segment", text)
		}
		s := seg.String()
		p.segs = append(p.segs, s)
		p.index = append(p.index, arrayIndex(s))
		seg.Reset()
		return nil
	}
	for i := 0; i < len(text); i++ {
		switch c := text[i]; c {
		case '\\':
			if i+1 == len(text) || (text[i+1] != '.' && text[i+1] != '\\') {
				return p, fmt.Errorf(`FromJSON path %q: a backslash must come before "." or "\"`, text)
			}
			i++
			seg.WriteByte(text[i])
		case '.':
			if err := flush(); err != nil {
				return p, err
			}
		default:
			seg.WriteByte(c)
		}
	}
	if err := flush(); err != nil {
		return p, err
	}
	return p, nil
}

// arrayIndex returns s as an array index (decimal digits, no leading zero
// unless "0"), or -1.
func arrayIndex(s string) int {
	if s == "" || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return -1
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return -1
		}
		n = n*10 + int(s[i]-'0')
	}
	return n
}

func mustJSONPath(text string) jsonPath {
	p, err := parseJSONPath(text)
	if err != nil {
		panic(err)
	}
	return p
}

// jsonValue is the raw text of one value found by scanJSON.
type jsonValue struct {
	found bool
	raw   []byte
}

// text converts a found value to identity text: strings are decoded,
// numbers kept as written; null and "" are missing; anything else is
// unusable and reason says why.
func (v jsonValue) text() (s string, reason string) {
	if !v.found || len(v.raw) == 0 {
		return "", ""
	}
	switch c := v.raw[0]; {
	case c == '"':
		if !utf8.Valid(v.raw) {
			return "", "is not valid UTF-8"
		}
		inner := v.raw[1 : len(v.raw)-1]
		if bytes.IndexByte(inner, '\\') < 0 {
			return string(inner), ""
		}
		if hasLoneSurrogate(inner) {
			// encoding/json would decode it to U+FFFD, so that distinct
			// ids ("\ud800", "\udfff") would collide, the second one
			// answered as a duplicate and dropped.
			return "", "holds a lone surrogate (\\u escape), which has no UTF-8 form"
		}
		if err := json.Unmarshal(v.raw, &s); err != nil {
			return "", "is not a valid JSON string"
		}
		return s, ""
	case c == '-' || (c >= '0' && c <= '9'):
		return string(v.raw), ""
	case c == 'n':
		return "", ""
	case c == 't' || c == 'f':
		return "", "is a boolean, not a string or a number"
	case c == '{':
		return "", "is an object, not a string or a number"
	default:
		return "", "is an array, not a string or a number"
	}
}

// hasLoneSurrogate reports whether the inside of a JSON string (escapes
// already validated by the scanner) holds a \u escape of a UTF-16
// surrogate that is not part of a high-low pair.
func hasLoneSurrogate(inner []byte) bool {
	for i := 0; i < len(inner); i++ {
		if inner[i] != '\\' {
			continue
		}
		i++ // the escaped character
		r, ok := unicodeEscape(inner, i-1)
		if !ok {
			continue
		}
		i += 4
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return true
		case r >= 0xD800 && r <= 0xDBFF:
			low, ok := unicodeEscape(inner, i+1)
			if !ok || low < 0xDC00 || low > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

// unicodeEscape decodes the \uXXXX escape at s[at:], if there is one.
func unicodeEscape(s []byte, at int) (rune, bool) {
	if at < 0 || at+6 > len(s) || s[at] != '\\' || s[at+1] != 'u' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(s[at+2:at+6]), 16, 16)
	return rune(n), err == nil
}

// maxJSONDepth matches encoding/json's nesting limit.
const maxJSONDepth = 10000

// scanJSON validates data as one JSON value (as json.Valid does) and, in the
// same single pass, returns the raw value at each path (found false when
// absent). It allocates only for member names that contain escapes and lie
// on a path.
func scanJSON(data []byte, paths []jsonPath) ([]jsonValue, error) {
	if len(paths) > 64 {
		return nil, errors.New("too many JSON paths")
	}
	s := jsonScanner{data: data, paths: paths, out: make([]jsonValue, len(paths))}
	var all uint64
	for i := range paths {
		all |= 1 << i
	}
	s.skipSpace()
	if err := s.value(all, 0); err != nil {
		return nil, err
	}
	s.skipSpace()
	if s.pos != len(s.data) {
		return nil, s.fail("unexpected data after the top-level value")
	}
	return s.out, nil
}

type jsonScanner struct {
	data  []byte
	pos   int
	depth int
	paths []jsonPath
	out   []jsonValue
}

func (s *jsonScanner) fail(what string) error {
	return fmt.Errorf("body is not valid JSON: %s at offset %d", what, s.pos)
}

func (s *jsonScanner) skipSpace() { s.pos = jsontext.SkipSpace(s.data, s.pos) }

// value scans one value. mask holds the paths that lead through this value
// (their first depth segments matched its location) and continue below it.
func (s *jsonScanner) value(mask uint64, depth int) error {
	if s.pos >= len(s.data) {
		return s.fail("unexpected end")
	}
	switch c := s.data[s.pos]; {
	case c == '{':
		return s.object(mask, depth)
	case c == '[':
		return s.array(mask, depth)
	case c == '"':
		_, err := s.str()
		return err
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	}
	return s.fail("unexpected character")
}

func (s *jsonScanner) literal(lit string) error {
	if len(s.data)-s.pos < len(lit) || string(s.data[s.pos:s.pos+len(lit)]) != lit {
		return s.fail("invalid literal")
	}
	s.pos += len(lit)
	return nil
}

func (s *jsonScanner) number() error {
	d := s.data
	if d[s.pos] == '-' {
		s.pos++
	}
	switch {
	case s.pos < len(d) && d[s.pos] == '0':
		s.pos++
	case s.pos < len(d) && d[s.pos] >= '1' && d[s.pos] <= '9':
		s.digits()
	default:
		return s.fail("invalid number")
	}
	if s.pos < len(d) && d[s.pos] == '.' {
		s.pos++
		if s.digits() == 0 {
			return s.fail("invalid number")
		}
	}
	if s.pos < len(d) && (d[s.pos] == 'e' || d[s.pos] == 'E') {
		s.pos++
		if s.pos < len(d) && (d[s.pos] == '+' || d[s.pos] == '-') {
			s.pos++
		}
		if s.digits() == 0 {
			return s.fail("invalid number")
		}
	}
	return nil
}

func (s *jsonScanner) digits() int {
	start := s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	return s.pos - start
}

// str scans a string starting at its opening quote and reports whether it
// holds escapes.
func (s *jsonScanner) str() (escaped bool, err error) {
	d := s.data
	s.pos++ // opening quote
	for s.pos < len(d) {
		c := d[s.pos]
		switch {
		case c == '"':
			s.pos++
			return escaped, nil
		case c < 0x20:
			return false, s.fail("control character in string")
		case c == '\\':
			escaped = true
			s.pos++
			if s.pos >= len(d) {
				return false, s.fail("unexpected end")
			}
			switch d[s.pos] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.pos++
			case 'u':
				s.pos++
				for range 4 {
					if s.pos >= len(d) || !isHex(d[s.pos]) {
						return false, s.fail("invalid \\u escape")
					}
					s.pos++
				}
			default:
				return false, s.fail("invalid escape")
			}
		default:
			s.pos++
		}
	}
	return false, s.fail("unexpected end")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// descendKey splits the paths in mask whose segment at depth is key into
// those that end there (leaf) and those that go on below it (deeper).
func (s *jsonScanner) descendKey(mask uint64, depth int, key []byte) (leaf, deeper uint64) {
	for i := range s.paths {
		if mask&(1<<i) != 0 && s.paths[i].segs[depth] == string(key) {
			leaf, deeper = splitMask(leaf, deeper, i, len(s.paths[i].segs) == depth+1)
		}
	}
	return leaf, deeper
}

// descendIndex is descendKey for the element n of an array.
func (s *jsonScanner) descendIndex(mask uint64, depth int, n int) (leaf, deeper uint64) {
	for i := range s.paths {
		if mask&(1<<i) != 0 && s.paths[i].index[depth] == n {
			leaf, deeper = splitMask(leaf, deeper, i, len(s.paths[i].segs) == depth+1)
		}
	}
	return leaf, deeper
}

func splitMask(leaf, deeper uint64, i int, ends bool) (uint64, uint64) {
	if ends {
		return leaf | 1<<i, deeper
	}
	return leaf, deeper | 1<<i
}

// forget drops what was found for the paths in mask.
func (s *jsonScanner) forget(mask uint64) {
	for i := range s.out {
		if mask&(1<<i) != 0 {
			s.out[i] = jsonValue{}
		}
	}
}

func (s *jsonScanner) record(leaf uint64, start int) {
	for i := range s.out {
		if leaf&(1<<i) != 0 {
			s.out[i] = jsonValue{found: true, raw: s.data[start:s.pos]}
		}
	}
}

func (s *jsonScanner) enter() error {
	s.depth++
	if s.depth > maxJSONDepth {
		return s.fail("nesting too deep")
	}
	s.pos++ // '{' or '['
	s.skipSpace()
	return nil
}

func (s *jsonScanner) object(mask uint64, depth int) error {
	if err := s.enter(); err != nil {
		return err
	}
	if s.pos < len(s.data) && s.data[s.pos] == '}' {
		s.pos++
		s.depth--
		return nil
	}
	for {
		if s.pos >= len(s.data) || s.data[s.pos] != '"' {
			return s.fail("expected a member name")
		}
		keyStart := s.pos
		escaped, err := s.str()
		if err != nil {
			return err
		}
		rawKey := s.data[keyStart:s.pos]
		s.skipSpace()
		if s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.fail("expected ':'")
		}
		s.pos++
		s.skipSpace()

		var leaf, deeper uint64
		if mask != 0 {
			key := rawKey[1 : len(rawKey)-1]
			if escaped {
				var decoded string
				if json.Unmarshal(rawKey, &decoded) == nil {
					key = []byte(decoded)
				}
			}
			leaf, deeper = s.descendKey(mask, depth, key)
			// A repeated member replaces the earlier one whole, as
			// encoding/json reads it: what was found below the earlier
			// one is gone unless the later one has it too.
			s.forget(deeper)
		}
		start := s.pos
		if err := s.value(deeper, depth+1); err != nil {
			return err
		}
		s.record(leaf, start)
		if done, err := s.afterElement('}'); done || err != nil {
			return err
		}
	}
}

// afterElement consumes what follows an object member or array element:
// a comma (more follow) or close (done, the container is left).
func (s *jsonScanner) afterElement(close byte) (done bool, err error) {
	s.skipSpace()
	if s.pos >= len(s.data) {
		return false, s.fail("unexpected end")
	}
	switch s.data[s.pos] {
	case ',':
		s.pos++
		s.skipSpace()
		return false, nil
	case close:
		s.pos++
		s.depth--
		return true, nil
	}
	return false, s.fail("expected ',' or '" + string(close) + "'")
}

func (s *jsonScanner) array(mask uint64, depth int) error {
	if err := s.enter(); err != nil {
		return err
	}
	if s.pos < len(s.data) && s.data[s.pos] == ']' {
		s.pos++
		s.depth--
		return nil
	}
	for n := 0; ; n++ {
		var leaf, deeper uint64
		if mask != 0 {
			leaf, deeper = s.descendIndex(mask, depth, n)
		}
		start := s.pos
		if err := s.value(deeper, depth+1); err != nil {
			return err
		}
		s.record(leaf, start)
		if done, err := s.afterElement(']'); done || err != nil {
			return err
		}
	}
}
