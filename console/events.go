package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/eventlog"
)

// maxTrail is the most audit records a page shows: a delivery's stream
// holds a handful (received, each failed attempt, dead-lettered,
// replayed, processed), so more means a loop worth seeing the start of.
const maxTrail = 500

// trailSection is a delivery's audit trail, oldest first.
type trailSection struct {
	Err     string
	Stream  string
	Records []trailRecord
	Cut     bool // the stream holds more than maxTrail records
}

type trailRecord struct {
	Version int64
	Type    string
	At      time.Time
	Data    string // the record's data, indented JSON
	Actor   string
}

// trail reads the audit trail of one delivery (wharf.DeliveryStream).
func (c *Console) trail(ctx context.Context, source, eventID string) *trailSection {
	stream := wharf.DeliveryStream(source, eventID)
	events, err := c.parts.audit.ReadStream(ctx, stream, 1, maxTrail+1)
	if errors.Is(err, eventlog.ErrInvalidStream) {
		return &trailSection{Stream: stream} // no delivery can have this name: no records
	}
	if err != nil {
		return &trailSection{Stream: stream, Err: c.sectionErr(ctx, "audit trail", err)}
	}
	s := &trailSection{Stream: stream}
	if len(events) > maxTrail {
		events, s.Cut = events[:maxTrail], true
	}
	for _, ev := range events {
		s.Records = append(s.Records, trailRecord{
			Version: ev.Version, Type: ev.Type, At: ev.RecordedAt, Data: indentJSON(ev.Data), Actor: ev.Metadata.Actor,
		})
	}
	return s
}

func indentJSON(data json.RawMessage) string {
	var b bytes.Buffer
	if json.Indent(&b, data, "", "  ") != nil {
		return string(data)
	}
	return b.String()
}

// eventsPage is the audit lookup's data.
type eventsPage struct {
	Source, ID string
	Trail      *trailSection // nil until both fields are given
}

// eventQuery is the audit lookup's query for one event.
func eventQuery(source, id string) string {
	return url.Values{"source": {source}, "id": {id}}.Encode()
}

// events serves GET /events?source=&id=: the audit trail of one delivery,
// found by the provider's event id. Without both fields it shows the
// form; a delivery without records answers 404.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	if c.parts.audit == nil {
		c.fail(w, r, http.StatusNotFound, "this console has no audit log (wharf.Config.Audit is off, or Config.AuditLog is unset)")
		return
	}
	q := r.URL.Query()
	page := eventsPage{Source: q.Get("source"), ID: q.Get("id")}
	status := http.StatusOK
	switch {
	case page.Source == "" && page.ID == "":
	case page.Source == "" || page.ID == "":
		c.fail(w, r, http.StatusBadRequest, "the audit lookup needs both a source and an event id")
		return
	default:
		page.Trail = c.trail(r.Context(), page.Source, page.ID)
		if page.Trail.Err == "" && len(page.Trail.Records) == 0 {
			status = http.StatusNotFound
		}
	}
	c.render(w, r, status, "events", "Audit trail", page)
}
