// Package eventlog is wharf's append-only event log (pattern 5): event
// sourcing for audit trails. A service records what happened as events in
// streams ("order-42": placed, paid, shipped), folds a stream back into its
// current state, tails the whole log, and keeps read models up to date
// with projections that can be rebuilt from the log at any time.
//
//	log, err := eventlog.New(pool, eventlog.Config{}) // after wharf.Migrate
//	defer log.Close()
//
//	res, err := log.Append(ctx, "order-42", eventlog.NoStream, eventlog.NewEvent{
//		Type:     "order.placed",
//		Data:     []byte(`{"total": 1250}`),
//		Metadata: eventlog.Metadata{SourceEventID: "evt_1NG8", Actor: "stripe"},
//	})
//	// res.Version == 1
//
//	order, version, err := eventlog.Load(ctx, log, "order-42", Order{}, Order.Apply)
//	_, err = log.Append(ctx, "order-42", version, eventlog.NewEvent{Type: "order.paid", Data: []byte(`{}`)})
//	if errors.Is(err, eventlog.ErrVersionConflict) { /* someone else appended: reload and decide again */ }
//
// # Guarantees
//
// The log is append-only, in the database: triggers on event_log reject
// every UPDATE, DELETE and TRUNCATE, whoever sends it (only a role that can
// disable triggers, the owner or a superuser, can get past them).
//
// Each stream's versions run 1, 2, 3, ... without gaps. An append names the
// version it expects the stream to be at: AnyVersion (no check), NoStream
// (the stream must have no events; 0 means the same) or an exact version.
// The check and the write are one statement: the stream's row in
// event_streams is moved forward only if it is at the expected version,
// and the events are inserted with the versions that follow, under that
// row's lock, so concurrent appenders to one stream are serialised and
// exactly one of several that expect the same version wins. A loser gets
// a *VersionConflictError (errors.Is ErrVersionConflict) carrying the
// actual version; it wrote nothing, drew no position, and its transaction
// (AppendTx) is not aborted.
//
// Positions are global but have holes (sequences are not transactional)
// and do not follow commit order across streams; no reader relies on them
// being contiguous.
//
// Append runs in a transaction of its own, in one round trip, commits with
// synchronous_commit on and wakes projections. AppendTx writes in the
// caller's transaction (a queue handler's, say, so that the audit record
// commits with the work it records); call Notify after committing.
//
// Bad input (an empty or non-UTF-8 stream name or type, data that is not
// JSON jsonb can store, an expected version below -1 other than
// AnyVersion) is refused in Go with an error wrapping ErrInvalidStream,
// ErrInvalidEvent or ErrInvalidArgument; nothing is written.
//
// # Reading the whole log
//
// ReadAll and ReadCategory (streams with a name prefix) return events
// after a Cursor, in (read key, position) order, and only events whose
// read key is below the transaction-id horizon: the oldest transaction
// still running that could write to this database. An event's read key is
// its transaction's id, raised to the read key of the stream's previous
// event when that is higher, so each stream's events come in version order
// (transaction ids are handed out when a transaction first writes, not
// when it commits; across streams the order is neither commit nor position
// order). Below the horizon no transaction can commit any more, and none
// that starts later can get a lower id (nor a lower read key), so a
// reader that loops on ReadAll with the cursor it returns sees every
// committed event exactly once and never a rolled-back one, even when an
// append that drew a lower position commits after others. (Reading by
// position alone skips such an event: the reader has moved past its
// position before it commits.)
//
// The cost: any transaction that has written anything in this database
// holds the horizon while it runs (transactions of other databases of the
// cluster do not, once they are seen to belong elsewhere). A long batch job, a psql
// session left open in a transaction, or an abandoned prepared transaction
// stops every tailing reader and every projection until it ends (appends
// and ReadStream/Load are not affected). TailLag reports how many
// committed events wait beyond the horizon and which transaction holds it
// (its pid, age and query); watch it, and set
// idle_in_transaction_session_timeout on the roles that might forget a
// transaction:
//
//	lag, err := log.TailLag(ctx)
//	if lag.Events > 1000 || lag.HolderAge > time.Minute {
//		slog.Warn("event log tail held back", "events", lag.Events, "pid", lag.HolderPID, "age", lag.HolderAge, "query", lag.HolderQuery)
//	}
//
// Cursors hold read keys, transaction ids, which belong to the cluster: they stay
// valid on its physical replicas (where the horizon is the snapshot's
// xmin, so a running transaction of any database of the cluster holds the
// tail) and across pg_upgrade, but a log restored
// from a logical dump into another cluster needs that cluster's
// transaction counter moved past the largest tx_id first (pg_resetwal -x),
// or new events would sort before old ones.
//
// # Projections
//
// A Projection runs a function over the log from a checkpoint stored in
// event_checkpoints, saved in the same transaction as the function's
// writes: each batch locks the checkpoint row, reads the events after it,
// runs the function in the transaction, moves the checkpoint and commits,
// so every event's effects on the database land exactly once, however
// runners crash. Replicas running the same projection take turns (the
// checkpoint row is locked per batch). A projection may follow one
// category only.
//
//	proj, err := log.NewProjection(eventlog.ProjectionConfig{
//		Name:     "order-totals",
//		Category: "order-",
//		Handler: func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
//			for _, ev := range events {
//				if _, err := tx.Exec(ctx, `INSERT INTO order_totals ...`, ...); err != nil {
//					return err // the whole batch rolls back and is retried
//				}
//			}
//			return nil
//		},
//	})
//	go proj.Run(ctx) // cancel ctx to stop after the batch in flight
//
// An idle projection wakes on LISTEN/NOTIFY (Append notifies after its
// commit, coalesced; one LISTEN connection per Log, outside the pool) and
// polls every PollInterval as the fallback.
//
// Rebuild replays the log into a projection from the start, for when a bug
// corrupted its tables: the caller's reset empties them in the same
// transaction that resets the checkpoint, then batches replay the log with
// progress reported, while the live projection, on every replica, is held
// off by an advisory lock that Rebuild holds exclusively and each live
// batch needs shared:
//
//	err := proj.Rebuild(ctx, func(ctx context.Context, tx pgx.Tx) error {
//		_, err := tx.Exec(ctx, `TRUNCATE order_totals`)
//		return err
//	}, func(done, total int64) { slog.Info("rebuilding", "done", done, "total", total) })
//
// # Tables and connections
//
// event_log (the events), event_streams (each stream's version: the row an
// append locks) and event_checkpoints, created by wharf.Migrate. An append
// or a read uses one pool connection for one round trip (two after a
// version conflict); a running projection uses one per batch, and a
// rebuild one for its whole run.
package eventlog
