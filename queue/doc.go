// Package queue stores webhook events in PostgreSQL and hands them to
// workers under leases: pattern 1 of wharf, queue-based processing. The
// HTTP endpoint only validates, stores and acknowledges; workers process
// later, so a slow or failing downstream never costs an event.
//
// # Storing
//
// Enqueue writes an event durably (synchronous_commit on, whatever the
// server default) and reports whether it was new or a duplicate of one
// already queued, by (source, event id). Concurrent Enqueue calls share one
// INSERT and one commit (group commit) while each returns only after its own
// row is committed. EnqueueTx writes in the caller's transaction;
// EnqueueBatch writes many events in one round trip.
//
//	q, err := queue.New(pool, queue.Config{})
//	res, err := q.Enqueue(ctx, queue.NewEvent{
//		Source: "stripe", ID: "evt_1", Type: "invoice.paid", Body: body,
//	})
//	if err != nil { /* answer 503: the provider retries */ }
//	// res.Duplicate: already stored; answer 200 so the provider stops.
//
// # Consuming
//
// A Consumer fetches due events (FOR UPDATE SKIP LOCKED) for its workers and
// runs each in a transaction that also completes it: the handler's writes
// and the event's removal commit together, or not at all.
//
//	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
//		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
//			_, err := tx.Exec(ctx, `UPDATE invoices SET paid = true WHERE id = $1`, id(ev.Body))
//			return err // non-nil: rolled back and retried after a backoff
//		},
//	})
//	go c.Run(ctx) // cancel ctx for a graceful shutdown
//
// Several events share a transaction (TxBatch), each under its own
// savepoint, so one commit covers many; a failing handler rolls back only
// its own event. A transaction stops at MaxTxSavepoints events whose
// handlers used the database, and a worker is handed about as many events
// as its transactions run in MaxTxDuration, so slow handlers are not
// leased in bulk. With BatchKey and BatchHandler, the events of a
// transaction that share a key run in one call under one savepoint (or
// several calls, when the key has a limit), for handlers that write many
// events' effects in one statement; if the call fails it is rolled back
// and they run one by one. An event that fails MaxAttempts times is
// exhausted: handed to Config.OnExhausted in the transaction that removes
// it (the dead letter queue installs one), or kept in the table as
// "exhausted".
//
// A fetch walks the due events oldest first and skips those it may not
// take (ConsumerConfig.Only and Exclude, paused sources and handlers). While
// most of the events ahead are ones it skips (a backlog behind an open
// breaker, types no handler takes, a paused handler), a Consumer fetches
// each of its kinds on its own instead, one handler name at a time,
// through an index by kind and handler, so that the backlog costs its
// fetches nothing (FetchParams.ByKind).
//
// # Leases and crashes
//
// A fetched event is leased for LeaseDuration and its lease is extended by
// heartbeats while it waits or runs. Only the current lease holder can
// complete, retry, defer or release it (ErrLeaseLost otherwise). If a
// worker dies, even by SIGKILL, its events' leases expire and a rescuer
// returns them to the queue within LeaseDuration plus RescueInterval; that
// run counts as an attempt, so an event that kills its worker every time
// still ends after MaxAttempts.
//
// Fetch counts an attempt; Defer and Release give it back. The attempt is
// counted when the event is fetched, not when its handler starts, so a
// worker that dies charges it to every event it held: the one running, and
// those of its transaction and of the chunks it had fetched ahead (up to
// two chunks per worker, each of at most TxBatch) that never started. The rescuer marks
// the events it returns as rescued (Event.Rescued). Fetch returns a
// rescued event alone, and a Consumer runs it with nothing else in flight
// in its process: it waits for its other transactions to finish, runs the
// rescued event in a transaction of its own, and only then fetches again.
// Each wait lasts a second at most, so a slow or hung handler holds the
// process back by no more than that; the rescued event then runs beside
// it.
// An event that kills its worker every time therefore charges the events
// held beside it on its first crash only; its later crashes charge it
// alone, and it reaches MaxAttempts without taking other events with it.
// After a crash the rescued events run one at a time per process, slower
// than batches but brief. A worker's Retry clears the mark; Defer and
// Release keep it.
//
// # Ordering keys
//
// Events of one source that share an OrderingKey run one at a time, in id
// order; events of different keys run in parallel. A fetch takes the key by
// inserting it into queue_ordering_locks, whose primary key holds across
// fetchers on any number of replicas. An event that commits later than a
// younger event of its key (its transaction started first but committed
// last) runs after that younger event. An exhausted event stops holding
// back its key; replayed from the dead letter queue, it is stored anew,
// and so runs after the events of its key stored before the replay. An
// event that waits (a paused handler, a retry's backoff, a deferral)
// holds back the later events of its key, whichever handler takes them.
//
// # Wake-ups
//
// After a commit the queue sends NOTIFY, from its own goroutine and at most
// every 2 ms, never inside the inserting transaction (where it would take a
// cluster-wide lock until commit). Consumers LISTEN on a dedicated
// connection outside the pool and poll every PollInterval as the fallback;
// PollOnly serves a PgBouncer in transaction mode. Consumers in the same
// process as the Enqueue are woken directly.
//
// # Tables and connections
//
// The tables (created by wharf.Migrate) are queue (the row every fetch,
// heartbeat and retry rewrites), queue_payloads (the event as received:
// its deduplication key, body and headers, written once) and
// queue_ordering_locks. Postgres rewrites the whole row on UPDATE and adds
// an entry to each of its indexes, so the hot row is kept narrow and
// lightly indexed: a fetch costs about half what it would with the body and
// the unique key in the hot row. A Consumer's one fetcher sets the pace of
// its workers, so its fetch leaves the payloads out: each worker reads
// and decodes its own events' payloads. Completed events are deleted in the
// completing transaction; the tables vacuum early and unthrottled (see the
// migration).
//
// A consumer needs ConnsNeeded(Workers) pool connections at once: one per
// worker, and two that the fetcher, the heartbeats and the rescuer share.
// Its LISTEN connection is opened outside the pool. A process that also
// enqueues needs Config.Committers more, plus one for the notifier.
// NewConsumer returns ErrPoolTooSmall rather than starving at run time.
package queue
