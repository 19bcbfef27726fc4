// Package wharftest helps you test the webhook handlers of a service built
// on wharf: sign requests the way each provider does, run a Pipeline's
// workers against a test database until its queue is drained, and assert
// where an event ended up (processed once, queued, dead-lettered) and what
// its audit trail says.
//
// The library itself never imports this package; only your tests do.
//
//	func TestInvoicePaid(t *testing.T) {
//		pool := testPool(t) // a migrated database of this test's own (see below)
//		p, err := app.NewPipeline(pool) // your production wiring: sources and handlers
//		require.NoError(t, err)
//		t.Cleanup(p.Close)
//
//		h := wharftest.New(t, pool, p)
//		stripe := wharftest.Stripe(app.StripeSecret)
//		res := h.Send("stripe", stripe, wharftest.Webhook{ID: "evt_1", Type: "invoice.paid"})
//		require.Equal(t, http.StatusAccepted, res.StatusCode)
//
//		h.Drain() // runs the workers until the event is processed
//		h.RequireProcessedOnce("stripe", res.EventID)
//		// ... and assert on your own tables.
//	}
//
// # Signing
//
// StandardWebhooks, Stripe, GitHub, Shopify, Slack and HMAC return a Signer
// for one provider and secret. Signer.Sign builds one Delivery (headers and
// body, signed with the root package's Sign functions); send it to a
// server with Delivery.Send, or build an *http.Request with
// Delivery.Request and hand it to Pipeline.Handler directly through an
// httptest.ResponseRecorder. Sending the same Delivery twice is what a
// provider's retry looks like. A Webhook without a Body gets a minimal body
// of the provider's shape holding its ID and Type.
//
// # Running the workers
//
// A Harness wraps a Pipeline you built, registered sources and handlers
// included. Start runs Pipeline.Run in the background; Drain starts it if
// needed and waits, polling with a deadline (Harness.Timeout), until no
// event that has a handler is left in the queue: each was processed or
// dead-lettered. Events of types no handler takes stay queued (the
// Pipeline's default) and are not waited for, unless Config.Unhandled
// completes or dead-letters them. The workers stop, gracefully,
// when the test ends, or at Stop.
//
// Retries wait for the Pipeline's Backoff (1s doubling by default), then
// for the workers' next look at the queue (at most a second later), so set
// a short Backoff in tests whose handlers fail on purpose:
//
//	wharf.Config{Backoff: queue.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
//
// # A database
//
// wharftest does not start PostgreSQL: point DATABASE_URL at one (for
// instance docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust
// postgres:16) and give each test a database of its own, migrated with
// wharf.Migrate, so that the workers of one test never take another test's
// events, and tests can run with t.Parallel():
//
//	// testPool returns a pool on a fresh, migrated database, dropped when the test ends.
//	func testPool(t *testing.T) *pgxpool.Pool {
//		ctx := context.Background()
//		url := cmp.Or(os.Getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres")
//		admin, err := pgx.Connect(ctx, url)
//		require.NoError(t, err, "start PostgreSQL or set DATABASE_URL")
//		t.Cleanup(func() { admin.Close(ctx) })
//		name := "test_" + strings.ToLower(rand.Text())
//		_, err = admin.Exec(ctx, "CREATE DATABASE "+name)
//		require.NoError(t, err)
//		t.Cleanup(func() { admin.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)") })
//
//		cfg, err := pgxpool.ParseConfig(url)
//		require.NoError(t, err)
//		cfg.ConnConfig.Database = name
//		cfg.MaxConns = 16
//		pool, err := pgxpool.NewWithConfig(ctx, cfg)
//		require.NoError(t, err)
//		t.Cleanup(pool.Close)
//		require.NoError(t, wharf.Migrate(ctx, pool))
//		return pool
//	}
//
// The pool must serve the workers and the endpoint at once: Workers plus 5
// connections, plus what your handlers and the test use (16 is plenty for
// the defaults). With pgxpool's own default, 4 on a small machine, a
// Pipeline whose Config.Workers is unset runs one worker; one whose
// Workers is set higher than the pool can serve makes Drain fail with
// "pool too small".
//
// The endpoint answers 503 when storing an event takes longer than
// Config.AckDeadline (2s by default, for a provider's patience). On a
// loaded CI machine, with other tests creating databases and the race
// detector on, a store can stall that long now and then, and a test that
// expects 202 fails; give the test's Pipeline a generous AckDeadline
// (wharf's own tests use 30s) unless the test is about the deadline.
//
// One Harness at a time may run a Pipeline's workers (Pipeline.Run cannot
// run twice at once).
//
// A Harness reports failures to the test given to New, so call its
// methods from that test's goroutine; parallel subtests each build their
// own Harness (a cheap thing: one query) over the same pool and Pipeline.
package wharftest
