package console

import (
	"net/http"
	"slices"
	"strings"

	"github.com/wharfhq/wharf/dlq"
)

// maskedValue replaces a masked header's value.
const maskedValue = "•••• masked"

// headerMask decides which header values the entry page hides: those of
// dlq.SecretHeader, the rule wharf dlq show masks by too, and those of
// Config.MaskHeaders, the keys of the map.
type headerMask map[string]bool

func newHeaderMask(extra []string) headerMask {
	m := headerMask{}
	for _, h := range extra {
		m[http.CanonicalHeaderKey(h)] = true
	}
	return m
}

func (m headerMask) masked(name string) bool {
	return m[http.CanonicalHeaderKey(strings.ReplaceAll(name, "_", "-"))] || dlq.SecretHeader(name)
}

// headerRow is one header as the entry page shows it.
type headerRow struct {
	Name   string
	Values []string
	Masked bool
}

// rows returns h's headers in name order, masked ones with their values
// replaced: a masked value never reaches the template.
func (m headerMask) rows(h http.Header) []headerRow {
	out := make([]headerRow, 0, len(h))
	for name, values := range h {
		row := headerRow{Name: name, Values: values}
		if m.masked(name) {
			row.Masked = true
			row.Values = []string{maskedValue}
		}
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b headerRow) int { return strings.Compare(a.Name, b.Name) })
	return out
}
