package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/idempotency"
)

func ExampleKey() {
	fmt.Println(idempotency.Key("stripe", "evt_1NG8"))
	// A source or an id that contains the separator cannot be confused
	// with another split of the same text.
	fmt.Println(idempotency.Key("a:b", "c"), idempotency.Key("a", "b:c"))
	// Output:
	// 6:stripe:evt_1NG8
	// 3:a:b:c 1:a:b:c
}

func ExampleDownstreamKey() {
	key := idempotency.Key("stripe", "evt_1NG8")
	fmt.Println(idempotency.DownstreamKey("billing.charge", key))
	// Output:
	// c4361497-0d7b-8602-89b1-11a951b932ea
}

// A consumer's handler claims the event in the transaction that does its
// work: both commit, or neither.
func ExampleStore_Claim() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	store, err := idempotency.New(pool, idempotency.Config{})
	if err != nil {
		log.Fatal(err)
	}
	eventID, invoiceID := "evt_1NG8", "in_42"
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		first, err := store.Claim(ctx, tx, "billing.mark-paid", idempotency.Key("stripe", eventID))
		if err != nil || !first {
			return err // a duplicate: already done
		}
		_, err = tx.Exec(ctx, `UPDATE invoices SET paid = true WHERE id = $1`, invoiceID)
		return err
	})
	if err != nil {
		log.Fatal(err) // rolled back, claim included: the redelivery runs it again
	}
}

// Once suits code without a transaction of its own.
func ExampleStore_Once() {
	ctx := context.Background()
	pool, _ := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	store, _ := idempotency.New(pool, idempotency.Config{})
	ran, err := store.Once(ctx, "billing.mark-paid", idempotency.Key("stripe", "evt_1NG8"),
		func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE invoices SET paid = true WHERE id = $1`, "in_42")
			return err
		})
	if err != nil {
		log.Fatal(err)
	}
	if !ran {
		log.Print("duplicate delivery, skipped")
	}
}

// A side effect outside the database: the payment API gets the same
// idempotency key on every attempt, and a duplicate delivery gets the
// stored outcome instead of a second charge.
func ExampleStore_Do() {
	ctx := context.Background()
	pool, _ := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	store, _ := idempotency.New(pool, idempotency.Config{})
	charge := func(ctx context.Context, amount int64, idempotencyKey string) ([]byte, error) {
		// POST /v1/charges with header "Idempotency-Key: " + idempotencyKey
		return []byte(`{"id":"ch_1"}`), nil
	}
	result, ran, err := store.Do(ctx, "billing.charge", idempotency.Key("stripe", "evt_1NG8"),
		func(ctx context.Context, lock *idempotency.Lock) ([]byte, error) {
			return charge(ctx, 4200, lock.DownstreamKey())
		})
	switch {
	case errors.Is(err, idempotency.ErrInProgress):
		log.Print("another worker is charging; retry later")
	case err != nil:
		log.Fatal(err)
	case !ran:
		log.Printf("charged before: %s", result)
	default:
		log.Printf("charged: %s", result)
	}
}
