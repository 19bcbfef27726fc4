// Package idempotency makes webhook consumers idempotent: pattern 2 of
// wharf. Providers deliver at least once, so a consumer sees some events
// twice (a retry after a timeout, a redelivery after its own crash, two
// workers racing after a lease expired). The provider's event id is the key
// in the processed_events table, and a consumer records there that it
// processed a key, so that the second delivery does nothing.
//
// # Consumers and keys
//
// A row is identified by (consumer, key). The consumer is a stable name for
// the piece of code that processes events ("billing.mark-invoice-paid"):
// it must survive deploys and renames of Go functions, since a new name
// makes every key new again. Two consumers processing the same event are
// independent. The key identifies the event across every source the
// consumer sees: provider ids are only unique within a provider, so build
// it from the source and the id, with Key:
//
//	key := idempotency.Key("stripe", ev.ID) // "6:stripe:evt_1NG8…"
//
// Consumer names are at most MaxConsumerLen (200) bytes and keys
// MaxKeyLen (1024) bytes of valid UTF-8 without NUL bytes; anything else is
// refused with ErrInvalidKey before anything is written.
//
// # Database effects: Claim and Once
//
// Claim records the key inside the transaction that does the consumer's
// work, with one INSERT … ON CONFLICT DO NOTHING. The claim commits with
// the work or rolls back with it, so the work's effects happen exactly
// once: a crash at any point leaves both or neither, and of two
// transactions racing on one key, the second waits for the first and then
// either skips (the first committed) or runs (it rolled back).
//
//	store, err := idempotency.New(pool, idempotency.Config{})
//	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		first, err := store.Claim(ctx, tx, "billing.mark-paid", idempotency.Key("stripe", ev.ID))
//		if err != nil || !first {
//			return err // a duplicate: nothing to do
//		}
//		_, err = tx.Exec(ctx, `UPDATE invoices SET paid = true WHERE id = $1`, invoiceID)
//		return err
//	})
//
// Once does the same for code without a transaction of its own: it opens
// one, claims, runs a function in it and commits, and says whether it ran.
//
// # External side effects: Begin, Finish and Do
//
// A payment API call or an email cannot roll back with a transaction. For
// them there is a second mode, in the spirit of Stripe's idempotency keys.
// Begin marks the key in progress under a lock that lasts
// Config.LockDuration (5 minutes) and commits at once, so that every
// replica sees it; Finish stores the outcome. A duplicate arriving while
// the key is in progress gets ErrInProgress (with the lock's expiry, to
// retry after); one arriving after Finish gets the stored outcome. A lock
// whose holder died without finishing can be taken over after it expires:
// exactly one of the callers racing for it wins, with a new fence token,
// and the old holder's late Finish is refused with ErrLockLost. Do wraps it
// all around a function:
//
//	res, ran, err := store.Do(ctx, "billing.charge", key, func(ctx context.Context, l *idempotency.Lock) ([]byte, error) {
//		return charge(ctx, amount, l.DownstreamKey()) // sent as the Idempotency-Key header
//	})
//	// ran false, err nil: charged earlier; res is what that call stored.
//	// errors.Is(err, idempotency.ErrInProgress): another worker is charging; retry later.
//
// The side effect itself may still happen twice: a holder can crash after
// the downstream acted and before Finish, and the taker then acts again.
// Only the downstream can close that gap, which is what DownstreamKey is
// for: a deterministic key derived from (consumer, key), the same for every
// attempt, replica and release, to send the downstream as its own
// idempotency key.
//
// # One table, two modes
//
// Both modes share processed_events, so that one primary key makes a key
// one thing and one prune covers both. Each row records its mode; using a
// key from the mode it was not claimed in (Claim on a key taken by Begin,
// or Begin on a key claimed by Claim) returns ErrModeMismatch and changes
// nothing, so a consumer cannot confuse the two for one key.
//
// # Retention
//
// Keys are kept for Config.Retention (7 days), which must outlive the
// longest retry window of every provider (Stripe retries for up to 3
// days): a redelivery after its key was pruned runs again. Prune deletes
// older keys in batches, each batch a short transaction, and
// never a key whose external-mode lock is still live. Call it periodically;
// a wharf.Pipeline's Run does, hourly.
//
// # Table
//
// processed_events (created by wharf.Migrate): consumer, key, mode,
// processed_at; and for the external mode state, token, locked_until,
// attempts and result. Primary key (consumer, key), plus a B-tree on
// processed_at for pruning and the per-minute counts. Rows are
// written once in the tx mode and never updated, so the table is
// insert-and-prune only; see the migration for why it has no fillfactor or
// autovacuum settings.
package idempotency
