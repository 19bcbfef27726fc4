package wharf_test

import (
	"context"
	"encoding/json"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
)

// A handler that marks many invoices paid in one statement: each call gets
// the events of one worker transaction that no earlier delivery has
// processed. If the call fails, it is rolled back and each event runs
// again in a call of its own, so only the event that fails alone retries.
func ExamplePipeline_HandleBatch() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	p, err := wharf.New(pool, wharf.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Source("stripe", wharf.Stripe(os.Getenv("STRIPE_WEBHOOK_SECRET"))); err != nil {
		log.Fatal(err)
	}
	invoiceOf := func(ev wharf.Event) (string, error) {
		var body struct {
			Data struct {
				Object struct {
					ID string `json:"id"`
				} `json:"object"`
			} `json:"data"`
		}
		err := json.Unmarshal(ev.Body, &body)
		return body.Data.Object.ID, err
	}
	err = p.HandleBatch("stripe", "invoice.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		ids := make([]string, 0, len(evs))
		for _, ev := range evs {
			id, err := invoiceOf(ev)
			if err != nil {
				return wharf.Permanent(err) // alone, this event is dead-lettered at once
			}
			ids = append(ids, id)
		}
		_, err := tx.Exec(ctx, `UPDATE invoices SET paid = true WHERE id = ANY($1)`, ids)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	go p.Run(ctx)
}
