package eventlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Expected versions for Append and AppendTx, besides an exact version N >= 0
// (the stream must hold exactly N events; 0 means it must be empty).
const (
	// AnyVersion appends whatever the stream's version: no concurrency
	// check. It is math.MinInt64, so it cannot be mistaken for a version.
	AnyVersion int64 = math.MinInt64
	// NoStream requires that the stream has no events yet (the same check
	// as 0): for the event that creates an entity.
	NoStream int64 = -1
)

// NewEvent is an event to append.
type NewEvent struct {
	// Type names what happened ("order.placed"). Required; at most
	// MaxTypeLen bytes of UTF-8 without NUL.
	Type string
	// Data is the event's body as JSON, stored as jsonb (so read back
	// with insignificant whitespace removed, object keys sorted by length
	// then bytes, and only the last of duplicate keys kept). Required: an
	// event with nothing to say uses {} or null. Strings may not hold
	// \u0000, which jsonb cannot store.
	Data []byte
	// Metadata says where the event came from. Optional.
	Metadata Metadata
}

// Metadata describes an event's context, stored in event_log.metadata as a
// JSON object whose keys are the json tags below; empty fields are left
// out. Strings must be UTF-8 without NUL.
type Metadata struct {
	// CorrelationID is shared by every event of one business process
	// (a checkout, a webhook's whole processing).
	CorrelationID string `json:"correlation_id,omitempty"`
	// CausationID is the id of the message or event that caused this one
	// (for an event caused by another event of the log, its position).
	CausationID string `json:"causation_id,omitempty"`
	// SourceEventID is the provider's event id of the webhook this event
	// records ("evt_1NG8"), linking the audit trail to the queue, the
	// processed_events table and the dead letter queue.
	SourceEventID string `json:"source_event_id,omitempty"`
	// Actor is who or what did it: a user id, "stripe", a service name.
	Actor string `json:"actor,omitempty"`
	// Extra holds further string values for the application.
	Extra map[string]string `json:"extra,omitempty"`
}

func (m *Metadata) isZero() bool {
	return m.CorrelationID == "" && m.CausationID == "" && m.SourceEventID == "" && m.Actor == "" && len(m.Extra) == 0
}

// AppendResult is the outcome of an append.
type AppendResult struct {
	// Version is the stream's version after the append: the version of its
	// last event. Use it as the expected version of the next append.
	Version int64
	// Positions are the events' global positions, in the order given.
	// They grow with versions but have holes: never compute one from
	// another.
	Positions []int64
	// TxID is the appending transaction's id.
	TxID uint64
	// ReadKey is the events' read key (see Event.ReadKey): with a position
	// it forms an event's Cursor.
	ReadKey uint64
}

// Append appends events to stream in a transaction of its own, if the
// stream is at version expected (AnyVersion, NoStream, or N >= 0), and
// wakes projections after the commit. The transaction commits with
// synchronous_commit on, whatever the server's setting.
//
// A stream at another version gets an error wrapping ErrVersionConflict (a
// *VersionConflictError with the actual version) and nothing is written.
// Invalid input (ErrInvalidStream, ErrInvalidEvent, ErrInvalidArgument)
// writes nothing either.
func (l *Log) Append(ctx context.Context, stream string, expected int64, events ...NewEvent) (AppendResult, error) {
	res, err := l.append(ctx, l.pool, true, stream, expected, events)
	if err == nil {
		l.Notify()
	}
	return res, err
}

// AppendTx is Append inside the caller's transaction: the events are
// visible, and the stream's new version is taken, when the caller commits.
// Until then other appenders to the stream wait for it (the stream's row
// is locked), so keep the transaction short.
//
// A version conflict does not abort tx: it returns an error wrapping
// ErrVersionConflict and tx can go on (the usual answer is to roll back,
// reload the stream and decide again). If the conflict came from waiting
// for a concurrent appender, tx holds the stream's row lock until it ends.
// Under REPEATABLE READ or SERIALIZABLE, Postgres reports a concurrent
// append as a serialization failure (SQLSTATE 40001) instead, which aborts
// tx: retry the transaction.
//
// Projections are not woken (a notification sent before the commit would
// find nothing): call Notify after committing, or they find the events
// within their poll interval. AppendTx does not change tx's
// synchronous_commit.
func (l *Log) AppendTx(ctx context.Context, tx pgx.Tx, stream string, expected int64, events ...NewEvent) (AppendResult, error) {
	if tx == nil {
		return AppendResult{}, fmt.Errorf("%w: tx is nil", ErrInvalidArgument)
	}
	return l.append(ctx, tx, false, stream, expected, events)
}

// append validates, then writes with one statement in one round trip, in
// the caller's transaction or, for Append (own), in an implicit one that
// commits when the statement ends.
func (l *Log) append(ctx context.Context, db querier, own bool, stream string, expected int64, events []NewEvent) (AppendResult, error) {
	if err := validateStream(stream); err != nil {
		return AppendResult{}, err
	}
	if expected < NoStream && expected != AnyVersion {
		return AppendResult{}, fmt.Errorf("%w: stream %q: expected version %d: use AnyVersion, NoStream (-1) or a version >= 0",
			ErrInvalidArgument, stream, expected)
	}
	n := len(events)
	if n == 0 || n > MaxEventsPerAppend {
		return AppendResult{}, &InvalidEventError{Stream: stream, Index: -1, Field: "events",
			Reason: fmt.Sprintf("an append takes 1 to %d events, got %d", MaxEventsPerAppend, n)}
	}
	types := make([]string, n)
	data := make([]string, n)
	meta := make([]string, n)
	for i := range events {
		var err error
		if types[i], data[i], meta[i], err = encodeEvent(stream, i, &events[i]); err != nil {
			return AppendResult{}, err
		}
	}

	head := headExpected
	switch {
	case expected == AnyVersion:
		head = headAny
	case expected <= 0:
		head = headNew
	}
	ownTx := 0
	if own {
		ownTx = 1
	}
	var sql string
	var args []any
	if n == 1 {
		sql, args = l.sql.appendOne[ownTx][head], []any{stream, int64(1), types[0], data[0], meta[0]}
	} else {
		sql, args = l.sql.append[ownTx][head], []any{stream, int64(n), types, data, meta}
	}
	if head == headExpected {
		args = append(args, expected)
	}

	var res AppendResult
	var written []int64 // position, version pairs
	var position, version int64
	rows, err := db.Query(ctx, sql, args...)
	if err == nil {
		_, err = pgx.ForEachRow(rows, []any{&position, &version, &res.TxID, &res.ReadKey}, func() error {
			written = append(written, position, version)
			res.Version = max(res.Version, version)
			return nil
		})
	}
	if err != nil {
		return AppendResult{}, l.appendError(stream, events, err)
	}
	if len(written) == 2*n {
		// RETURNING need not follow insertion order: place each position
		// by its version.
		res.Positions = make([]int64, n)
		base := res.Version - int64(n)
		for i := 0; i < len(written); i += 2 {
			res.Positions[written[i+1]-base-1] = written[i]
		}
		return res, nil
	}
	if len(written) != 0 {
		// Cannot happen: the head returns one row or none.
		return AppendResult{}, fmt.Errorf("eventlog: stream %q: append wrote %d of %d events", stream, len(written)/2, n)
	}
	// The head found the stream at another version and nothing was
	// written. Read the version it has now, in a statement of its own.
	var actual int64
	if err := db.QueryRow(ctx, l.sql.streamVersion, stream).Scan(&actual); err != nil {
		return AppendResult{}, fmt.Errorf("eventlog: stream %q: version conflict; reading the actual version failed: %w", stream, err)
	}
	return AppendResult{}, &VersionConflictError{Stream: stream, Expected: expected, Actual: actual}
}

// appendError names the stream in a database error, and reports data that
// Postgres refused although it passed the checks in Go (a number out of
// jsonb's range, or a value whose jsonb form exceeds jsonb's size limit,
// say) as an invalid event.
func (l *Log) appendError(stream string, events []NewEvent, err error) error {
	var pgErr *pgconn.PgError
	// Class 22: data exception; 54000: program limit exceeded, jsonb's size.
	if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || pgErr.Code == "54000") {
		index, typ := -1, ""
		if len(events) == 1 {
			index, typ = 0, events[0].Type
		}
		return &InvalidEventError{Stream: stream, Index: index, Type: typ, Field: "data",
			Reason: "rejected by the database: " + pgErr.Message, Err: err}
	}
	return fmt.Errorf("eventlog: append to stream %q: %w", stream, err)
}

// emptyObject is the metadata of an event without any.
const emptyObject = "{}"

// encodeEvent validates ev and returns its type, data and metadata as the
// strings the append statement takes.
func encodeEvent(stream string, i int, ev *NewEvent) (typ, data, meta string, err error) {
	invalid := func(field, reason string) error {
		return &InvalidEventError{Stream: stream, Index: i, Type: ev.Type, Field: field, Reason: reason}
	}
	if err := checkName("type", ev.Type, MaxTypeLen); err != nil {
		return "", "", "", invalid("type", err.Error())
	}
	if reason := checkJSON(ev.Data); reason != "" {
		return "", "", "", invalid("data", reason)
	}
	meta = emptyObject
	if !ev.Metadata.isZero() {
		if reason := ev.Metadata.check(); reason != "" {
			return "", "", "", invalid("metadata", reason)
		}
		b, err := json.Marshal(&ev.Metadata)
		if err != nil {
			return "", "", "", invalid("metadata", err.Error())
		}
		meta = string(b)
	}
	return ev.Type, string(ev.Data), meta, nil
}

func (m *Metadata) check() string {
	for _, f := range [...]struct{ name, value string }{
		{"correlation_id", m.CorrelationID},
		{"causation_id", m.CausationID},
		{"source_event_id", m.SourceEventID},
		{"actor", m.Actor},
	} {
		if reason := checkText(f.value); reason != "" {
			return f.name + " " + reason
		}
	}
	for k, v := range m.Extra {
		if k == "" {
			return "extra has an empty key"
		}
		if reason := checkText(k); reason != "" {
			return fmt.Sprintf("extra key %q %s", k, reason)
		}
		if reason := checkText(v); reason != "" {
			return fmt.Sprintf("extra[%q] %s", k, reason)
		}
	}
	return ""
}

// validateStream checks a stream name.
func validateStream(stream string) error {
	if err := checkName("stream name", stream, MaxStreamLen); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidStream, err)
	}
	return nil
}

// checkName checks a required name: non-empty, at most max bytes, text
// that Postgres can store.
func checkName(what, name string, max int) error {
	switch {
	case name == "":
		return fmt.Errorf("%s is empty", what)
	case len(name) > max:
		return fmt.Errorf("%s %.40q... is longer than %d bytes", what, name, max)
	}
	if reason := checkText(name); reason != "" {
		return fmt.Errorf("%s %q %s", what, name, reason)
	}
	return nil
}

// checkText returns why Postgres's text type cannot hold s, or "".
func checkText(s string) string {
	switch {
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	case strings.IndexByte(s, 0) >= 0:
		return "holds a NUL byte"
	}
	return ""
}

// checkJSON returns why data cannot be stored as jsonb, or "". Beyond
// json.Valid, jsonb refuses invalid UTF-8, the escape \u0000 and unpaired
// surrogate escapes; checking them here keeps a bad event from aborting
// the caller's transaction.
func checkJSON(data []byte) string {
	switch {
	case len(data) == 0:
		return "is empty; an event without data uses {} or null"
	case len(data) > MaxDataLen:
		return fmt.Sprintf("is %d bytes, over jsonb's limit of %d (MaxDataLen)", len(data), MaxDataLen)
	case !json.Valid(data):
		return "is not valid JSON"
	case !utf8.Valid(data):
		return "is not valid UTF-8"
	}
	if bytes.Contains(data, []byte(`\u`)) {
		return checkUnicodeEscapes(data)
	}
	return ""
}

// checkUnicodeEscapes walks the strings of valid JSON and checks each \u
// escape: not \u0000, and surrogates only in high-low pairs.
func checkUnicodeEscapes(data []byte) string {
	inString := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			i++ // the escaped character; valid JSON guarantees it exists
			if data[i] != 'u' {
				continue
			}
			r := hex4(data[i+1 : i+5])
			i += 4
			switch {
			case r == 0:
				return `holds \u0000, which jsonb cannot store`
			case r >= 0xDC00 && r <= 0xDFFF:
				return "holds an unpaired low surrogate escape"
			case r >= 0xD800 && r <= 0xDBFF:
				if i+6 >= len(data) || data[i+1] != '\\' || data[i+2] != 'u' {
					return "holds an unpaired high surrogate escape"
				}
				if low := hex4(data[i+3 : i+7]); low < 0xDC00 || low > 0xDFFF {
					return "holds an unpaired high surrogate escape"
				}
				i += 6
			}
		}
	}
	return ""
}

// hex4 decodes four hex digits (already validated by json.Valid).
func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}
