package console

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"unicode/utf8"
)

// maxBodyShown is the most of a body the entry page shows; the rest is
// cut, with a note. The stored body is never changed.
const maxBodyShown = 1 << 20

// bodyView is a raw body as the entry page shows it: JSON indented, other
// UTF-8 text as it is, anything else as a hex dump. The template escapes
// it like any other text.
type bodyView struct {
	Kind  string // "JSON", "text" or "binary"
	Text  string
	Size  int  // the stored body's size in bytes
	Shown int  // how many bytes of Text are shown
	Cut   bool // Text was cut at maxBodyShown
}

func viewBody(body []byte) bodyView {
	v := bodyView{Size: len(body)}
	var out []byte
	var indented bytes.Buffer
	// JSON with invalid UTF-8 in its strings passes json.Valid; it is
	// shown as binary, like any body that is not UTF-8.
	text := utf8.Valid(body)
	switch {
	case text && json.Valid(body) && json.Indent(&indented, body, "", "  ") == nil:
		v.Kind, out = "JSON", indented.Bytes()
	case text:
		v.Kind, out = "text", body
	default:
		v.Kind, out = "binary", []byte(hex.Dump(body))
	}
	if len(out) > maxBodyShown {
		// out is UTF-8, so the cut can split at most its last character:
		// back up to that character's start unless it is whole.
		out = out[:maxBodyShown]
		start := len(out) - 1
		for start > 0 && !utf8.RuneStart(out[start]) {
			start--
		}
		if !utf8.FullRune(out[start:]) {
			out = out[:start]
		}
		v.Cut = true
	}
	v.Text, v.Shown = string(out), len(out)
	return v
}
