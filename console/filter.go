package console

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wharfhq/wharf/dlq"
)

// filterForm is a dead-letter filter as the operator typed it: the list
// page's form fields and query parameters. Times without a zone are UTC,
// like every time the console shows. UpTo ("upto", a dlq.Cursor) is no
// field of the form: it is the bound a bulk replay's confirmation pinned
// (dlq.Filter.UpTo), kept in its form and in the links to the set.
type filterForm struct {
	Source, Type, Handler, Error, Status, Since, Until, UpTo string
}

// timeLayouts are the forms a since/until value may take: what
// <input type="datetime-local"> sends, a date, or RFC 3339.
var timeLayouts = []string{"2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02", time.RFC3339Nano}

// readFilter reads the filter fields of q.
func readFilter(q url.Values) filterForm {
	get := func(k string) string { return strings.TrimSpace(q.Get(k)) }
	return filterForm{
		Source: get("source"), Type: get("type"), Handler: get("handler"), Error: get("error"),
		Status: get("status"), Since: get("since"), Until: get("until"), UpTo: get("upto"),
	}
}

// filter turns the form into a dlq.Filter, or a *badRequest saying which
// field is wrong and what it should look like.
func (ff filterForm) filter() (dlq.Filter, error) {
	f := dlq.Filter{Source: ff.Source, Type: ff.Type, Handler: ff.Handler, ErrorContains: ff.Error}
	switch s := dlq.Status(ff.Status); s {
	case "", dlq.StatusDead, dlq.StatusReplayed, dlq.StatusDiscarded:
		f.Status = s
	default:
		return f, &badRequest{fmt.Sprintf("status %q is not one of dead, replayed, discarded", ff.Status)}
	}
	var err error
	if f.Since, err = parseTime("since", ff.Since); err != nil {
		return f, err
	}
	if f.Until, err = parseTime("until", ff.Until); err != nil {
		return f, err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, &badRequest{fmt.Sprintf("since (%s) must be before until (%s)", ff.Since, ff.Until)}
	}
	if ff.UpTo != "" {
		if f.UpTo, err = dlq.ParseCursor(ff.UpTo); err != nil {
			return f, &badRequest{fmt.Sprintf("upto %q is not an entry bound; follow the links of a bulk replay instead", ff.UpTo)}
		}
	}
	return f, nil
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range timeLayouts {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, &badRequest{fmt.Sprintf("%s %q is not a time: use 2006-01-02, 2006-01-02T15:04 (UTC) or RFC 3339", field, s)}
}

// values returns the form's non-empty fields, for links that keep it.
func (ff filterForm) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{
		"source": ff.Source, "type": ff.Type, "handler": ff.Handler, "error": ff.Error,
		"status": ff.Status, "since": ff.Since, "until": ff.Until, "upto": ff.UpTo,
	} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// Empty reports whether the form filters nothing (status aside).
func (ff filterForm) Empty() bool {
	return ff.Source == "" && ff.Type == "" && ff.Handler == "" && ff.Error == "" && ff.Since == "" && ff.Until == ""
}

// maxPageLimit caps the list page's size, under dlq.MaxListLimit: a page
// is one HTML table, read by a person, and each row carries its entry's
// whole error history (a line of it shown).
const maxPageLimit = 200

// readPage reads the page size ("limit", 1 to maxPageLimit, default
// dlq.DefaultListLimit) and the keyset cursor ("after", dlq.Cursor's
// String) of q.
func readPage(q url.Values) (dlq.Page, error) {
	p := dlq.Page{Limit: dlq.DefaultListLimit}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPageLimit {
			return p, &badRequest{fmt.Sprintf("limit %q is not a number from 1 to %d", s, maxPageLimit)}
		}
		p.Limit = n
	}
	if s := q.Get("after"); s != "" {
		c, err := dlq.ParseCursor(s)
		if err != nil {
			return p, &badRequest{fmt.Sprintf("after %q is not a page cursor; follow the Next link instead", s)}
		}
		p.After = c
	}
	return p, nil
}

// Values is values, for templates (hidden fields).
func (ff filterForm) Values() url.Values { return ff.values() }
