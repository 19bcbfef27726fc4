package queue

import (
	"bytes"
	"encoding/json"
	"net/http"
	"unicode/utf8"

	"github.com/wharfhq/wharf/internal/jsontext"
)

// encodeHeaders encodes validated headers for the jsonb column as
// json.Marshal would, but for the order of the names, which jsonb sets
// itself. Headers whose names and values need no escapes, nearly all of
// them, are written directly; anything else goes through encoding/json,
// which cost the group committers about a sixth of their CPU time.
func encodeHeaders(h http.Header) []byte {
	if h == nil {
		return nil
	}
	size := len("{}")
	for name, values := range h {
		if !plainJSON(name) {
			return marshalHeaders(h)
		}
		size += len(name) + len(`"":[],`)
		for _, v := range values {
			if !plainJSON(v) {
				return marshalHeaders(h)
			}
			size += len(v) + len(`"",`)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, '{')
	for name, values := range h {
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
		if values == nil {
			b = append(b, "null"...)
			continue
		}
		b = append(b, '[')
		for i, v := range values {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = append(b, v...)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// plainJSON reports whether s can stand between quotes in JSON as it is,
// and means the same to json.Marshal: printable ASCII without quotes,
// backslashes, or the characters json.Marshal escapes for HTML (<, >, &).
// Anything else, rare in headers, is left to encoding/json.
func plainJSON(s string) bool {
	for i := range len(s) {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func marshalHeaders(h http.Header) []byte {
	b, err := json.Marshal(h)
	if err != nil {
		panic(err) // a map of strings always encodes
	}
	return b
}

// decodeHeaders decodes stored headers, a JSON object of string arrays as
// jsonb prints it ({"Webhook-Id": ["msg_1"], ...}), exactly as
// json.Unmarshal into an http.Header would. Headers whose names and values
// hold no escapes, which is nearly all of them, are scanned directly;
// anything else goes through encoding/json. Decoding headers with
// encoding/json alone took a fifth of a Consumer's CPU time in Go.
func decodeHeaders(data []byte) (http.Header, error) {
	if h, ok := scanHeaders(data); ok {
		return h, nil
	}
	var h http.Header
	err := json.Unmarshal(data, &h)
	return h, err
}

// scanHeaders decodes data when it is an object of arrays of plain strings
// (valid UTF-8, no escapes or control characters) with JSON whitespace
// anywhere between tokens, and reports false for anything else, valid or
// not.
func scanHeaders(data []byte) (http.Header, bool) {
	s := headerScanner{data: data}
	if !s.consume('{') {
		return nil, false
	}
	h := http.Header{}
	if s.consume('}') {
		return h, s.end()
	}
	for {
		name, ok := s.plainString()
		if !ok || !s.consume(':') || !s.consume('[') {
			return nil, false
		}
		values := []string{}
		if !s.consume(']') {
			for {
				v, ok := s.plainString()
				if !ok {
					return nil, false
				}
				values = append(values, v)
				if s.consume(']') {
					break
				}
				if !s.consume(',') {
					return nil, false
				}
			}
		}
		h[name] = values
		if s.consume('}') {
			return h, s.end()
		}
		if !s.consume(',') {
			return nil, false
		}
	}
}

type headerScanner struct {
	data []byte
	pos  int
}

// consume skips JSON whitespace and then c, reporting whether c was there.
func (s *headerScanner) consume(c byte) bool {
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

func (s *headerScanner) skipSpace() { s.pos = jsontext.SkipSpace(s.data, s.pos) }

// end reports whether only whitespace is left.
func (s *headerScanner) end() bool {
	s.skipSpace()
	return s.pos == len(s.data)
}

// plainString reads a string token with no escapes and no control
// characters, in valid UTF-8.
func (s *headerScanner) plainString() (string, bool) {
	if !s.consume('"') {
		return "", false
	}
	n := bytes.IndexByte(s.data[s.pos:], '"')
	if n < 0 {
		return "", false
	}
	raw := s.data[s.pos : s.pos+n]
	for _, c := range raw {
		if c < 0x20 || c == '\\' {
			return "", false
		}
	}
	if !utf8.Valid(raw) {
		return "", false
	}
	s.pos += n + 1
	return string(raw), true
}
