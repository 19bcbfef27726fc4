package dlq

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/queue"
)

// ReplayResult counts what a replay did.
type ReplayResult struct {
	// Replayed entries went back to the queue (or found their event already
	// queued by a redelivery) and are now marked replayed.
	Replayed int
	// Skipped entries were not dead (already replayed or discarded, perhaps
	// by a concurrent replay) or did not exist.
	Skipped int
}

// Replay sends dead entries back to q, attempts reset, in one transaction,
// and marks them replayed. Replaying an entry twice, even concurrently,
// makes one queue row: the second replay finds it no longer dead.
// Consumers are woken after the commit. q must live in the DLQ's schema.
func (d *DLQ) Replay(ctx context.Context, q *queue.Queue, ids ...int64) (ReplayResult, error) {
	if err := d.checkQueue(q); err != nil {
		return ReplayResult{}, err
	}
	if len(ids) == 0 {
		return ReplayResult{}, nil
	}
	var res ReplayResult
	// READ COMMITTED, whatever the role's default: the queue's insert
	// refuses another when it deduplicates against dead letters.
	err := pgx.BeginTxFunc(ctx, d.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, d.sql.lockDead, ids)
		if err != nil {
			return err
		}
		var replayed []int64
		var named []Replayed
		var events []queue.NewEvent
		var id int64
		var ev queue.NewEvent
		var headers []byte
		var maxAttempts int
		_, err = pgx.ForEachRow(rows, []any{&id, &ev.Source, &ev.ID, &ev.Type, &ev.OrderingKey, &ev.Handler, &ev.Body, &headers, &maxAttempts}, func() error {
			e := queue.NewEvent{Source: ev.Source, ID: ev.ID, Type: ev.Type, OrderingKey: ev.OrderingKey,
				Handler: ev.Handler, Body: append([]byte{}, ev.Body...), MaxAttempts: maxAttempts}
			if len(e.Handler) > queue.MaxHandlerLen {
				// No queue row held this name (the queue refuses longer
				// ones): Config.HandlerName derived it, as "source/type"
				// for an event queued without a handler. The event goes
				// back without one, as it was queued, rather than failing
				// the replay of every entry with it.
				e.Handler = ""
			}
			if len(headers) > 0 {
				var h http.Header
				if err := json.Unmarshal(headers, &h); err != nil {
					return fmt.Errorf("entry %d: decode headers: %w", id, err)
				}
				e.Headers = h
			}
			replayed = append(replayed, id)
			named = append(named, Replayed{ID: id, Source: e.Source, EventID: e.ID, Type: e.Type})
			events = append(events, e)
			return nil
		})
		if err != nil {
			return err
		}
		if len(events) == 0 {
			return nil
		}
		// The entries stop being dead first: a queue that refuses events
		// still dead-lettered as duplicates (the Pipeline's does) must see
		// them replayed. A duplicate then means a redelivery already queued
		// the event, or it was processed since: either way it is out of
		// the DLQ's hands, so the entry counts as replayed.
		if _, err := tx.Exec(ctx, d.sql.markReplayed, replayed); err != nil {
			return err
		}
		if _, err := q.EnqueueBatchTx(ctx, tx, events); err != nil {
			return err
		}
		if d.cfg.OnReplay != nil {
			if err := d.cfg.OnReplay(ctx, tx, named); err != nil {
				return fmt.Errorf("OnReplay: %w", err)
			}
		}
		res.Replayed = len(replayed)
		return nil
	})
	if err != nil {
		return ReplayResult{}, fmt.Errorf("dlq: replay: %w", err)
	}
	res.Skipped = len(ids) - res.Replayed
	if res.Replayed > 0 {
		q.Notify()
	}
	return res, nil
}

func (d *DLQ) checkQueue(q *queue.Queue) error {
	if q == nil {
		return fmt.Errorf("%w: queue is nil", ErrInvalidConfig)
	}
	if q.Schema() != d.cfg.Schema {
		return fmt.Errorf("%w: the queue's schema %q is not the DLQ's %q", ErrInvalidConfig, q.Schema(), d.cfg.Schema)
	}
	return nil
}

// ReplayOptions shape a bulk replay.
type ReplayOptions struct {
	// BatchSize is how many entries each transaction replays, and no more
	// than MaxPerSecond when that is set. Defaults to 100.
	BatchSize int
	// MaxPerSecond caps the replay rate, so a bulk replay does not flood
	// the consumers or the downstream: batches hold at most a second's
	// worth (at least one entry) and are spaced to keep the rate.
	// Defaults to no cap.
	MaxPerSecond float64
	// Progress, when set, is called after each batch with the entries
	// replayed so far and how many matched when the replay began.
	Progress func(replayed, total int64)
}

// ReplayMatching replays every dead entry that matches f into q, in
// batches, oldest first (Filter.Status is ignored: only dead entries
// replay), so that the events of one ordering key, which died in the
// order they were stored, are queued, and run, in that order again. It
// replays the entries that match when it starts, up to the newest of
// them (or f.UpTo, when set, as a replay confirmed for a count must):
// entries that die meanwhile, such as replayed ones dying again, are left
// out. It stops at the first error or when ctx ends, returning what it
// did so far.
func (d *DLQ) ReplayMatching(ctx context.Context, q *queue.Queue, f Filter, opts ReplayOptions) (ReplayResult, error) {
	if err := d.checkQueue(q); err != nil {
		return ReplayResult{}, err
	}
	f.Status = StatusDead
	batch := opts.BatchSize
	if batch == 0 {
		batch = DefaultReplayBatch
	}
	if batch < 1 || batch > MaxListLimit || opts.MaxPerSecond < 0 {
		return ReplayResult{}, fmt.Errorf("%w: BatchSize %d must be 1..%d and MaxPerSecond not negative", ErrInvalidFilter, batch, MaxListLimit)
	}
	if opts.MaxPerSecond > 0 && opts.MaxPerSecond < float64(batch) {
		// A batch is queued at once, in one transaction: a bigger one than
		// the rate would break the cap, and a set smaller than BatchSize
		// would go back in one go, unpaced.
		batch = max(1, int(opts.MaxPerSecond))
	}
	if f.UpTo == nil {
		newest, _, err := d.List(ctx, f, Page{Limit: 1, OmitBody: true})
		if err != nil || len(newest) == 0 {
			return ReplayResult{}, err
		}
		f.UpTo = &Cursor{DeadAt: newest[0].DeadAt, ID: newest[0].ID}
	}
	args, err := f.args()
	if err != nil {
		return ReplayResult{}, err
	}
	total, err := d.Count(ctx, f)
	if err != nil {
		return ReplayResult{}, err
	}
	var res ReplayResult
	var afterAt *time.Time
	var afterID int64
	start := time.Now()
	for {
		rows, err := d.pool.Query(ctx, d.sql.replayPage, append(args, afterAt, afterID, batch)...)
		if err != nil {
			return res, fmt.Errorf("dlq: replay: list: %w", err)
		}
		var ids []int64
		var id int64
		var deadAt time.Time
		if _, err := pgx.ForEachRow(rows, []any{&id, &deadAt}, func() error {
			ids = append(ids, id)
			return nil
		}); err != nil {
			return res, fmt.Errorf("dlq: replay: list: %w", err)
		}
		if len(ids) == 0 {
			return res, nil
		}
		r, err := d.Replay(ctx, q, ids...)
		res.Replayed += r.Replayed
		res.Skipped += r.Skipped
		if err != nil {
			return res, err
		}
		if opts.Progress != nil {
			opts.Progress(int64(res.Replayed), total)
		}
		if len(ids) < batch {
			return res, nil
		}
		afterAt, afterID = &deadAt, id
		if opts.MaxPerSecond > 0 {
			due := start.Add(time.Duration(float64(res.Replayed+res.Skipped) / opts.MaxPerSecond * float64(time.Second)))
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(time.Until(due)):
			}
		}
	}
}

// Discard sets dead entries aside: they stop counting as dead and are kept
// for audit until purged. A discarded entry no longer makes a delivery of
// its event a duplicate: if the provider sends the event again (a resend
// from its dashboard), it is taken as new, which is the only way such an
// event runs again. It returns how many it discarded.
func (d *DLQ) Discard(ctx context.Context, ids ...int64) (int, error) {
	tag, err := d.pool.Exec(ctx, d.sql.discard, ids)
	if err != nil {
		return 0, fmt.Errorf("dlq: discard: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Purge deletes replayed and discarded entries whose replay or discard is
// older than olderThan, in batches, and returns how many it deleted. Dead
// entries are never purged.
func (d *DLQ) Purge(ctx context.Context, olderThan time.Duration) (int64, error) {
	before, err := d.purgeCutoff(ctx, olderThan)
	if err != nil {
		return 0, err
	}
	return d.PurgeBefore(ctx, before)
}

// CountPurgeable returns how many entries Purge(ctx, olderThan) would
// delete now, and the cutoff that selects them (the database's clock minus
// olderThan). PurgeBefore with that cutoff deletes those entries and none
// replayed or discarded since: a purge that asks for a confirmation
// deletes what it counted.
func (d *DLQ) CountPurgeable(ctx context.Context, olderThan time.Duration) (n int64, before time.Time, err error) {
	if before, err = d.purgeCutoff(ctx, olderThan); err != nil {
		return 0, before, err
	}
	if err := d.pool.QueryRow(ctx, d.sql.countPurgeable, before).Scan(&n); err != nil {
		return 0, before, fmt.Errorf("dlq: count purgeable entries: %w", err)
	}
	return n, before, nil
}

// PurgeBefore deletes replayed and discarded entries whose replay or
// discard is before before, in batches, and returns how many it deleted.
// Dead entries are never purged.
func (d *DLQ) PurgeBefore(ctx context.Context, before time.Time) (int64, error) {
	const batch = 1000
	var total int64
	for {
		tag, err := d.pool.Exec(ctx, d.sql.purge, before, batch)
		if err != nil {
			return total, fmt.Errorf("dlq: purge: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < batch {
			return total, nil
		}
	}
}

// purgeCutoff is the time before which a replay or a discard is older than
// olderThan, by the database's clock.
func (d *DLQ) purgeCutoff(ctx context.Context, olderThan time.Duration) (time.Time, error) {
	var before time.Time
	if olderThan < 0 {
		return before, fmt.Errorf("%w: olderThan %s is negative", ErrInvalidFilter, olderThan)
	}
	if err := d.pool.QueryRow(ctx, d.sql.purgeCutoff, olderThan.Milliseconds()).Scan(&before); err != nil {
		return before, fmt.Errorf("dlq: purge cutoff: %w", err)
	}
	return before, nil
}
