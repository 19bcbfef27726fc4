package eventlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Event is an event as stored in the log.
type Event struct {
	// Position is the event's global position: unique, growing with the
	// stream's versions, but with holes, and not in commit order across
	// streams. Never compute one position from another.
	Position int64
	// Stream is the stream the event belongs to.
	Stream string
	// Version is the event's number within its stream, from 1, gapless.
	Version int64
	// Type names what happened.
	Type string
	// Data is the event's body, as jsonb returns it.
	Data json.RawMessage
	// Metadata says where the event came from. Metadata written around
	// wharf (by SQL) that does not fit the Metadata struct comes back
	// whole, as JSON text, in Extra[UnparsedMetadataKey], rather than
	// failing every read of the log (whose rows cannot be corrected).
	Metadata Metadata
	// RecordedAt is when the appending transaction started (the
	// database's now()).
	RecordedAt time.Time
	// TxID is the id of the transaction that appended the event.
	TxID uint64
	// ReadKey orders the log for ReadAll, with Position: TxID, raised to
	// the read key of the stream's previous event when that is higher, so
	// that a stream's events read in version order even when a transaction
	// that got its id early appended after a newer one.
	ReadKey uint64
}

// Cursor returns the event's place in the (ReadKey, Position) order that
// ReadAll, ReadCategory and projections read in: pass it as "after" to
// continue after this event.
func (e Event) Cursor() Cursor { return Cursor{TxID: e.ReadKey, Position: e.Position} }

// Cursor is a place in the log's read order: after the event with read key
// TxID (Event.ReadKey, named for the transaction id it usually equals) at
// Position. The zero Cursor is the start of the log.
// Store it between runs (String, ParseCursor) to continue where a reader
// stopped; it stays valid as long as the log lives in the same cluster
// (and its physical replicas, or a pg_upgrade of it).
type Cursor struct {
	TxID     uint64
	Position int64
}

// IsZero reports whether c is the start of the log.
func (c Cursor) IsZero() bool { return c == Cursor{} }

// String formats c as "txid/position", which ParseCursor reads.
func (c Cursor) String() string {
	return strconv.FormatUint(c.TxID, 10) + "/" + strconv.FormatInt(c.Position, 10)
}

// ParseCursor reads a cursor formatted by Cursor.String. The empty string
// is the start of the log.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	tx, pos, ok := strings.Cut(s, "/")
	txID, err1 := strconv.ParseUint(tx, 10, 64)
	position, err2 := strconv.ParseInt(pos, 10, 64)
	if !ok || err1 != nil || err2 != nil || position < 0 {
		return Cursor{}, fmt.Errorf("%w: cursor %q is not txid/position", ErrInvalidArgument, s)
	}
	return Cursor{TxID: txID, Position: position}, nil
}

// StreamVersion returns stream's current version: the number of events in
// it, 0 when it has none.
func (l *Log) StreamVersion(ctx context.Context, stream string) (int64, error) {
	if err := validateStream(stream); err != nil {
		return 0, err
	}
	var version int64
	if err := l.pool.QueryRow(ctx, l.sql.streamVersion, stream).Scan(&version); err != nil {
		return 0, fmt.Errorf("eventlog: read version of stream %q: %w", stream, err)
	}
	return version, nil
}

// ReadStream returns stream's events from version fromVersion on (1 and
// below mean from the start), in version order, at most limit of them (0
// means DefaultReadLimit; at most MaxReadLimit). Fewer than limit means
// the end of the stream was reached.
func (l *Log) ReadStream(ctx context.Context, stream string, fromVersion int64, limit int) ([]Event, error) {
	if err := validateStream(stream); err != nil {
		return nil, err
	}
	limit, err := checkLimit(limit)
	if err != nil {
		return nil, err
	}
	events, err := readEvents(ctx, l.pool, limit, l.sql.readStream, stream, max(fromVersion, 1), limit)
	if err != nil {
		return nil, fmt.Errorf("eventlog: read stream %q: %w", stream, err)
	}
	return events, nil
}

// Load folds stream into a state: it calls apply for each of the stream's
// events in version order, starting from initial, and returns the final
// state and the stream's version as read (0 for a stream without events),
// ready to be the expected version of the next append:
//
//	order, version, err := eventlog.Load(ctx, log, "order-42", Order{}, Order.Apply)
//	// decide, then
//	_, err = log.Append(ctx, "order-42", version, eventlog.NewEvent{...})
//
// The stream is read in one statement, row by row, so the events are a
// consistent prefix of the stream however long it is. If apply returns an
// error, Load stops and returns it with the state and version before the
// failing event.
func Load[S any](ctx context.Context, l *Log, stream string, initial S, apply func(S, Event) (S, error)) (S, int64, error) {
	state := initial
	if err := validateStream(stream); err != nil {
		return state, 0, err
	}
	rows, err := l.pool.Query(ctx, l.sql.load, stream)
	if err != nil {
		return state, 0, fmt.Errorf("eventlog: load stream %q: %w", stream, err)
	}
	defer rows.Close()
	var version int64
	var ev Event
	for rows.Next() {
		if err := scanEvent(rows, &ev); err != nil {
			return state, version, fmt.Errorf("eventlog: load stream %q: %w", stream, err)
		}
		if ev.Version != version+1 {
			return state, version, fmt.Errorf("eventlog: load stream %q: version %d follows version %d (the log was changed outside wharf)",
				stream, ev.Version, version)
		}
		next, err := apply(state, ev)
		if err != nil {
			return state, version, fmt.Errorf("eventlog: load stream %q: apply version %d (%s): %w", stream, ev.Version, ev.Type, err)
		}
		state, version = next, ev.Version
		ev = Event{}
	}
	if err := rows.Err(); err != nil {
		return state, version, fmt.Errorf("eventlog: load stream %q: %w", stream, err)
	}
	return state, version, nil
}

// ReadAll returns up to limit events of the whole log after cursor after
// (the zero Cursor for the start), with the cursor to pass next time: that
// of the last event returned, or after itself when there is none. limit 0
// means DefaultReadLimit; at most MaxReadLimit.
//
// Events come in (ReadKey, Position) order, which keeps each stream's
// events in version order (but is neither position nor commit order
// across streams), and only once every transaction that could still add
// an event before them has ended (see the package
// documentation, "Reading the whole log"): a reader that loops on ReadAll
// with the returned cursor sees every committed event exactly once, and
// never one that was rolled back, however appends interleave. The price
// is that the tail waits for the oldest write transaction in this
// database; TailLag measures it.
func (l *Log) ReadAll(ctx context.Context, after Cursor, limit int) ([]Event, Cursor, error) {
	return l.readAll(ctx, l.pool, "", after, limit)
}

// Head returns the cursor of the last event ReadAll can return now, or the
// zero Cursor for an empty log: a reader that starts from it sees only the
// events that become readable from now on, without reading the log before
// them (a tail that starts "from now").
func (l *Log) Head(ctx context.Context) (Cursor, error) {
	var c Cursor
	err := afterStatus(ctx, l.pool, l.sql.head, func(br pgx.BatchResults) error {
		return br.QueryRow().Scan(&c.TxID, &c.Position)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Cursor{}, nil
	}
	if err != nil {
		return Cursor{}, fmt.Errorf("eventlog: head: %w", err)
	}
	return c, nil
}

// ReadCategory is ReadAll restricted to streams whose name starts with
// prefix ("order-" reads "order-1", "order-2", ...). The prefix is matched
// literally: % and _ in it are not wildcards. Its cursor is a ReadAll
// cursor, so a reader can switch between the two.
func (l *Log) ReadCategory(ctx context.Context, prefix string, after Cursor, limit int) ([]Event, Cursor, error) {
	if err := checkName("category", prefix, MaxStreamLen); err != nil {
		return nil, after, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return l.readAll(ctx, l.pool, prefix, after, limit)
}

func (l *Log) readAll(ctx context.Context, db querier, category string, after Cursor, limit int) ([]Event, Cursor, error) {
	limit, err := checkLimit(limit)
	if err != nil {
		return nil, after, err
	}
	if after.Position < 0 {
		return nil, after, fmt.Errorf("%w: cursor position %d is negative", ErrInvalidArgument, after.Position)
	}
	sql, args := l.sql.readAll[0], []any{after.TxID, after.Position, limit}
	if category != "" {
		sql, args = l.sql.readAll[1], append(args, likePrefix(category))
	}
	var events []Event
	err = afterStatus(ctx, db, sql, func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		events, err = scanEvents(rows, limit)
		return err
	}, args...)
	if err != nil {
		return nil, after, fmt.Errorf("eventlog: read after %s: %w", after, err)
	}
	if len(events) > 0 {
		after = events[len(events)-1].Cursor()
	}
	return events, after, nil
}

func checkLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return DefaultReadLimit, nil
	case limit < 0 || limit > MaxReadLimit:
		return 0, fmt.Errorf("%w: limit %d is outside 0..%d", ErrInvalidArgument, limit, MaxReadLimit)
	}
	return limit, nil
}

// readEvents runs a query returning eventColumns.
func readEvents(ctx context.Context, db querier, sizeHint int, sql string, args ...any) ([]Event, error) {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return scanEvents(rows, sizeHint)
}

// afterStatus runs sql, a statement that evaluates horizonSQL, after
// statusFirstSQL in one round trip and one transaction (db's, or an
// implicit one), and hands its results to read.
func afterStatus(ctx context.Context, db querier, sql string, read func(pgx.BatchResults) error, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(statusFirstSQL)
	b.Queue(sql, args...)
	br := db.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		err = read(br)
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	return err
}

// scanEvents reads rows of eventColumns and closes rows.
func scanEvents(rows pgx.Rows, sizeHint int) ([]Event, error) {
	defer rows.Close()
	events := make([]Event, 0, min(sizeHint, 1024))
	for rows.Next() {
		events = append(events, Event{})
		if err := scanEvent(rows, &events[len(events)-1]); err != nil {
			return nil, err
		}
	}
	return events, rows.Err()
}

// scanEvent scans a row of eventColumns into ev.
func scanEvent(rows pgx.Rows, ev *Event) error {
	var data, meta []byte
	if err := rows.Scan(&ev.Position, &ev.Stream, &ev.Version, &ev.Type, &data, &meta, &ev.RecordedAt, &ev.TxID, &ev.ReadKey); err != nil {
		return err
	}
	ev.Data = data
	if !bytes.Equal(meta, []byte(emptyObject)) {
		if err := json.Unmarshal(meta, &ev.Metadata); err != nil {
			ev.Metadata = Metadata{Extra: map[string]string{UnparsedMetadataKey: string(meta)}}
		}
	}
	return nil
}

// UnparsedMetadataKey is the key in Metadata.Extra under which a read
// returns metadata that does not fit the Metadata struct (see
// Event.Metadata).
const UnparsedMetadataKey = "_unparsed"

// TailLag describes how far the transaction-id horizon holds ReadAll's
// tail (and every projection) back. See Log.TailLag.
type TailLag struct {
	// Horizon is the transaction id below which every transaction has
	// ended; ReadAll returns only events whose read key is below it.
	Horizon uint64
	// Events is the number of committed events at or above the horizon:
	// in the log, but not yet readable by ReadAll. Normally a handful
	// (appends committed in the last moments); a large number means a
	// long transaction is holding the tail.
	Events int64
	// HolderAge is how long the oldest transaction with an id (the one
	// that sets the horizon) has been running; 0 when none is running or
	// its details are hidden (the role lacks pg_read_all_stats).
	HolderAge time.Duration
	// HolderPID is that transaction's backend process id (for
	// pg_stat_activity or pg_terminate_backend); 0 when it is a prepared
	// transaction or none is running.
	HolderPID int
	// HolderQuery is the start of that backend's current or last query, if
	// visible to this role.
	HolderQuery string
	// HolderPreparedGID is the gid when the holder is a prepared (two-phase)
	// transaction, which holds the horizon until committed or rolled back
	// even across restarts.
	HolderPreparedGID string
}

// TailLag reports how far the horizon holds the tail of the log back: how
// many committed events ReadAll cannot return yet, and which transaction
// is responsible. Any transaction that has written anything in this
// database holds the horizon while it runs: a long one
// (a batch job, a forgotten psql session, an abandoned prepared
// transaction) stops every tailing reader and projection until it ends.
// Alert when Events or HolderAge grows.
func (l *Log) TailLag(ctx context.Context) (TailLag, error) {
	var lag TailLag
	var ageSeconds float64
	err := afterStatus(ctx, l.pool, l.sql.tailLag, func(br pgx.BatchResults) error {
		return br.QueryRow().Scan(&lag.Horizon, &lag.Events, &lag.HolderPID, &ageSeconds, &lag.HolderQuery, &lag.HolderPreparedGID)
	})
	if err != nil {
		return TailLag{}, fmt.Errorf("eventlog: tail lag: %w", err)
	}
	lag.HolderAge = time.Duration(ageSeconds * float64(time.Second))
	return lag, nil
}
