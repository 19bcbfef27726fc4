package idempotency_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/benchkit"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// Each benchmark measures wharf and a raw-SQL baseline in the same run and
// reports both rates and their ratio, because absolute numbers on a shared
// machine drift. Run them with, for example:
//
//	go test ./idempotency -run '^$' -bench . -benchtime 20000x

// benchInvoices is the business table a consumer writes to: one row per
// event.
const benchInvoices = `
CREATE TABLE bench_invoices (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice    text        NOT NULL,
    amount     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)`

const benchInsert = `INSERT INTO bench_invoices (invoice, amount) VALUES ($1, $2)`

// parallelFor runs fn(i) for i in [0, n) on workers goroutines and returns
// the elapsed time.
func parallelFor(b *testing.B, workers, n int, fn func(i int) error) time.Duration {
	elapsed, err := benchkit.Parallel(workers, n, fn)
	if err != nil {
		b.Fatal(err)
	}
	return elapsed
}

// BenchmarkClaim: 8 goroutines, each running transactions of
// BEGIN; Claim; INSERT one business row; COMMIT, every key new. Baseline:
// the same transactions without the Claim (BEGIN; INSERT; COMMIT), on the
// same pool and tables, in interleaved rounds. The claim is a round trip
// of its own whose answer decides whether the INSERT runs, as in a real
// consumer; nothing is pipelined. cost-ratio is the time with Claim over
// the time without; the target is a claim costing at most 1.3 times the
// transaction without it.
//
// A third variant sends SELECT 1 where the claim would be: rt-floor-ratio
// is what one more round trip costs by itself, the floor for any claim
// made in its own statement. On a machine where round trips are expensive
// relative to small writes, it is most of cost-ratio. The fourth,
// begin-claim-cost-ratio, claims with BeginClaim, which sends the claim in
// the BEGIN's round trip: the transactions then make as many round trips
// as the baseline's, and the ratio is what the claim's write costs. It is
// the way a consumer that opens a transaction per event meets the target
// where round trips are dear.
func BenchmarkClaim(b *testing.B) {
	const workers = 8
	ctx := context.Background()
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: workers + 2})
	_, err := pool.Exec(ctx, benchInvoices)
	require.NoError(b, err)
	store, err := idempotency.New(pool, idempotency.Config{})
	require.NoError(b, err)

	business := func(ctx context.Context, tx pgx.Tx, invoice string) error {
		_, err := tx.Exec(ctx, benchInsert, invoice, int64(4200))
		return err
	}
	variants := []struct {
		name string
		run  func(ctx context.Context, invoice string) error
	}{
		{"baseline", func(ctx context.Context, invoice string) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return business(ctx, tx, invoice) })
		}},
		{"floor", func(ctx context.Context, invoice string) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var one int
				if err := tx.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
					return err
				}
				return business(ctx, tx, invoice)
			})
		}},
		{"begin-claim", func(ctx context.Context, invoice string) error {
			tx, first, err := store.BeginClaim(ctx, "bench.mark-paid", idempotency.Key("bench", invoice))
			if err != nil || !first {
				return fmt.Errorf("claim of new key %q: first=%v err=%v", invoice, first, err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
			if err := business(ctx, tx, invoice); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}},
		{"claim", func(ctx context.Context, invoice string) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				first, err := store.Claim(ctx, tx, "bench.mark-paid", idempotency.Key("bench", invoice))
				if err != nil || !first {
					return fmt.Errorf("claim of new key %q: first=%v err=%v", invoice, first, err)
				}
				return business(ctx, tx, invoice)
			})
		}},
	}

	// Warm up: every connection opened and its statements prepared.
	for _, v := range variants {
		parallelFor(b, workers, 25*workers, func(i int) error { return v.run(ctx, fmt.Sprintf("warm-%s-%d", v.name, i)) })
	}

	n := max(b.N, 2000)
	const rounds = 24
	per := n / rounds
	elapsed := make([][]time.Duration, len(variants)) // [variant][round]
	b.ResetTimer()
	// Interleaved rounds, so drift on a shared machine hits all variants,
	// each round starting with the next variant, so none always follows
	// the same one.
	for round := range rounds {
		for k := range variants {
			j := (round + k) % len(variants)
			v := variants[j]
			elapsed[j] = append(elapsed[j], parallelFor(b, workers, per, func(i int) error {
				return v.run(ctx, fmt.Sprintf("evt_%016x%08x", rand.Uint64(), round*per+i))
			}))
		}
	}
	b.StopTimer()
	// Each ratio is the median over the rounds of that round's ratio, so a
	// round that the machine disturbed does not move it.
	costRatio := func(j int) float64 {
		ratios := make([]float64, rounds)
		for r := range rounds {
			ratios[r] = elapsed[j][r].Seconds() / elapsed[0][r].Seconds()
		}
		slices.Sort(ratios)
		return (ratios[(rounds-1)/2] + ratios[rounds/2]) / 2
	}
	total := func(j int) float64 {
		var sum time.Duration
		for _, d := range elapsed[j] {
			sum += d
		}
		return sum.Seconds()
	}
	txns := float64(rounds * per)
	b.ReportMetric(txns/total(0), "baseline-txn/s")
	b.ReportMetric(txns/total(3), "txn/s")
	b.ReportMetric(costRatio(3), "cost-ratio")
	b.ReportMetric(costRatio(1), "rt-floor-ratio")
	b.ReportMetric(costRatio(2), "begin-claim-cost-ratio")
	b.ReportMetric(0, "ns/op")
}
