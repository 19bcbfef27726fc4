package wharf_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// A handler may use every statement method of the tx it is given: a
// nested transaction whose failed statement it rolls back and goes on
// after, COPY, a batch, a query. Its writes land once and only once, a
// failed attempt's writes are undone whatever method made them, and its
// neighbours in the same worker transaction keep theirs. With a Timeout
// the handler's tx is wrapped once more (statements run without the
// timeout's cancellation), so both forms are checked.
func TestHandlerCanUseEveryTxMethod(t *testing.T) {
	t.Parallel()
	for _, timed := range []bool{false, true} {
		t.Run(fmt.Sprintf("timeout=%v", timed), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, wharf.Config{Workers: 1, TxBatch: 8})
			var mu sync.Mutex
			failedOnce := map[string]bool{}
			var opts []wharf.HandleOption
			if timed {
				opts = append(opts, wharf.Timeout(10*time.Second))
			}
			require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
				nested, err := tx.Begin(ctx)
				if err != nil {
					return err
				}
				if _, err := nested.Exec(ctx, `INSERT INTO effects VALUES ($1, 100)`, ev.ID); err != nil {
					return err
				}
				_, err = nested.Exec(ctx, `INSERT INTO effects VALUES ($1, 100)`, ev.ID)
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
					return fmt.Errorf("second insert in the nested tx: want a unique violation, got %v", err)
				}
				if err := nested.Rollback(ctx); err != nil {
					return err
				}

				if _, err := tx.CopyFrom(ctx, pgx.Identifier{"effects"}, []string{"event_id", "n"},
					pgx.CopyFromRows([][]any{{ev.ID, 1}})); err != nil {
					return err
				}
				b := &pgx.Batch{}
				b.Queue(`UPDATE effects SET n = n WHERE event_id = $1`, ev.ID)
				b.Queue(`SELECT n FROM effects WHERE event_id = $1`, ev.ID)
				br := tx.SendBatch(ctx, b)
				if _, err := br.Exec(); err != nil {
					return err
				}
				var n int
				if err := br.QueryRow().Scan(&n); err != nil {
					return err
				}
				if err := br.Close(); err != nil {
					return err
				}
				rows, err := tx.Query(ctx, `SELECT event_id FROM effects WHERE event_id = $1`, ev.ID)
				if err != nil {
					return err
				}
				ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					return err
				}
				if n != 1 || len(ids) != 1 {
					return fmt.Errorf("read back n=%d, rows %v: want the COPY's row alone", n, ids)
				}

				mu.Lock()
				defer mu.Unlock()
				if ev.ID == "e3" && !failedOnce[ev.ID] {
					failedOnce[ev.ID] = true
					return errors.New("downstream said no, this once")
				}
				return nil
			}, opts...))

			for i := range 6 {
				require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("e%d", i), "order.paid"))
			}
			h.run()
			h.eventually("every event to complete", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
			require.Equal(t, 6, h.count(`SELECT count(*) FROM effects WHERE n = 1`), "each event's COPY row once, the nested tx's rows rolled back")
			require.Equal(t, 6, h.count(`SELECT count(*) FROM effects`))
			require.Equal(t, 6, h.count(`SELECT count(*) FROM wharf.processed_events`))
			require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
			mu.Lock()
			defer mu.Unlock()
			require.True(t, failedOnce["e3"], "e3's first attempt failed after its writes")
		})
	}
}
