// Command node is the process the fault-injection suite starts, kills and
// restarts: a wharf service on one database, playing one role. It is built
// by the suite's tests (go build into a temporary directory) and is not
// meant to be run by hand, though it can be:
//
//	node -db postgres://postgres@127.0.0.1:5432/x -role ingest -addr 127.0.0.1:0
//	node -db postgres://postgres@127.0.0.1:5432/x -role worker
//
// The ingest role serves the endpoint of source "fi" (Standard Webhooks,
// the secret in -secret) at /webhooks/fi and prints "ready http://ADDR"
// once it listens; the worker role runs Pipeline.Run and prints "ready"
// before it starts. Both roles log to stderr at -log-level (warn unless
// told), each line with the process's pid, and register the same handlers
// (the ingest side needs their names to answer redeliveries of processed
// events as duplicates).
//
// Every handler writes its effect as one row of fi_effects (a table the
// test creates), in the event's transaction: an event processed twice has
// two rows. The event type chooses the fault:
//
//	fi.effect      writes the effect; fails every attempt when the body's
//	               data.poison is true, unless -fixed (a deploy of the fix)
//	fi.slow        sleeps data.sleep_ms before writing (past the lease)
//	fi.hang        on its first attempt writes, then hangs: in Postgres
//	               (pg_sleep) when data.hang is "db", on an HTTP call to
//	               -hang-url otherwise; the Timeout option (-timeout) ends it
//	fi.downstream  calls -downstream through the breaker "downstream"
//	               (3 failures in a row open it for -open-timeout), then
//	               writes
//	fi.crash       kills its own process with SIGKILL, as the OOM killer
//	               would, on every attempt
//	fi.stall       on its first attempt writes its effect, then stops its own
//	               process with SIGSTOP (a stall: a GC pause, a frozen VM)
//	               in the middle of the transaction; the test resumes it
//	               with SIGCONT, and the handler then returns nil
//	fi.batch       as fi.effect, through a HandleBatch handler that writes
//	               the effects of all the events of a call in one statement;
//	               a call holding a poison event fails whole
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/queue"
)

// Source is the name of the one source the node serves.
const Source = "fi"

type options struct {
	db, role, addr, secret string
	workers, maxAttempts   int
	lease, backoff         time.Duration
	rescueInterval         time.Duration
	timeout, openTimeout   time.Duration
	downstream, hangURL    string
	fixed                  bool
	logLevel               slog.Level
}

func main() {
	var o options
	flag.StringVar(&o.db, "db", "", "connection string of the database (migrated, with fi_effects)")
	flag.StringVar(&o.role, "role", "", `"ingest" or "worker"`)
	flag.StringVar(&o.addr, "addr", "127.0.0.1:0", "address the ingest role listens on")
	flag.StringVar(&o.secret, "secret", "", "Standard Webhooks secret (whsec_...)")
	flag.IntVar(&o.workers, "workers", 2, "Config.Workers of the worker role")
	flag.IntVar(&o.maxAttempts, "max-attempts", 8, "Config.MaxAttempts")
	flag.DurationVar(&o.lease, "lease", 2*time.Second, "Config.LeaseDuration")
	flag.DurationVar(&o.backoff, "backoff", 50*time.Millisecond, "initial retry backoff (max 4x)")
	flag.DurationVar(&o.rescueInterval, "rescue-interval", 0, "Config.RescueInterval; 0 for its default")
	flag.DurationVar(&o.timeout, "timeout", time.Second, "Timeout option of fi.hang")
	flag.DurationVar(&o.openTimeout, "open-timeout", 500*time.Millisecond, "OpenTimeout of the breaker \"downstream\"")
	flag.StringVar(&o.downstream, "downstream", "", "URL fi.downstream calls")
	flag.StringVar(&o.hangURL, "hang-url", "", "URL fi.hang waits on (a server that never answers)")
	flag.BoolVar(&o.fixed, "fixed", false, "poison events no longer fail (the fix is deployed)")
	flag.TextVar(&o.logLevel, "log-level", slog.LevelWarn, "lowest level logged to stderr (debug shows the consumer's switches of fetch strategy)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

// run plays o.role until the process is killed: the suite ends nodes with
// SIGKILL, so there is no graceful shutdown to wait for.
func run(o options) error {
	if o.role != "ingest" && o.role != "worker" {
		return fmt.Errorf(`-role must be "ingest" or "worker", not %q`, o.role)
	}
	cfg, err := pgxpool.ParseConfig(o.db)
	if err != nil {
		return err
	}
	// The worker role needs Workers + 2 (queue.ConnsNeeded) and the
	// ingest role its committers and the notifier (3); two to spare.
	cfg.MaxConns = int32(queue.ConnsNeeded(o.workers) + 2)
	ctx := context.Background()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	p, err := setup(pool, o)
	if err != nil {
		return err
	}
	defer p.Close()
	if o.role == "worker" {
		fmt.Println("ready")
		return p.Run(ctx)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/"+Source, p.Handler(Source))
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	fmt.Printf("ready http://%s/webhooks/%s\n", ln.Addr(), Source)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

// setup builds the Pipeline both roles share: the source and every handler.
func setup(pool *pgxpool.Pool, o options) (*wharf.Pipeline, error) {
	p, err := wharf.New(pool, wharf.Config{
		Workers:        o.workers,
		MaxAttempts:    o.maxAttempts,
		LeaseDuration:  o.lease,
		RescueInterval: o.rescueInterval,
		Backoff:        queue.Backoff{Initial: o.backoff, Max: 4 * o.backoff},
		PollInterval:   200 * time.Millisecond,
		Audit:          true, // the suite reads failed attempts in the audit trail
		Breakers: breaker.Config{Breakers: map[string]breaker.Settings{"downstream": {
			Trip:                breaker.TripOnConsecutiveFailures,
			ConsecutiveFailures: 3,
			OpenTimeout:         o.openTimeout,
			HalfOpenProbes:      1,
			HalfOpenWait:        200 * time.Millisecond,
		}}},
		// Every node logs to the same file; the pid tells whose line it is.
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel})).With("pid", os.Getpid()),
	})
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 30 * time.Second}
	err = errors.Join(
		p.Source(Source, wharf.StandardWebhooks(o.secret)),
		p.Handle(Source, "fi.effect", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			if d := data(ev); d.Poison && !o.fixed {
				return fmt.Errorf("poison event %s: cannot parse its amount (attempt %d)", ev.ID, ev.Attempt)
			}
			return effect(ctx, tx, ev)
		}),
		p.HandleBatch(Source, "fi.batch", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
			for _, ev := range evs {
				if d := data(ev); d.Poison && !o.fixed {
					return fmt.Errorf("poison event %s: cannot parse its amount (attempt %d, in a call of %d)", ev.ID, ev.Attempt, len(evs))
				}
			}
			return effects(ctx, tx, evs)
		}),
		p.Handle(Source, "fi.slow", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			time.Sleep(time.Duration(data(ev).SleepMS) * time.Millisecond) // the fault: a handler slower than its lease
			return effect(ctx, tx, ev)
		}),
		p.Handle(Source, "fi.hang", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			if err := effect(ctx, tx, ev); err != nil || ev.Attempt > 1 {
				return err
			}
			if data(ev).Hang == "db" {
				_, err := tx.Exec(ctx, `SELECT pg_sleep(3600)`)
				return fmt.Errorf("hung in the database: %w", err)
			}
			return call(ctx, client, o.hangURL, ev.ID)
		}, wharf.Timeout(o.timeout)),
		p.Handle(Source, "fi.downstream", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			if err := call(ctx, client, o.downstream, ev.ID); err != nil {
				return err
			}
			return effect(ctx, tx, ev)
		}, wharf.Downstream("downstream")),
		p.Handle(Source, "fi.stall", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			if err := effect(ctx, tx, ev); err != nil || ev.Attempt > 1 {
				return err
			}
			return syscall.Kill(os.Getpid(), syscall.SIGSTOP) // the fault: frozen until SIGCONT
		}),
		p.Handle(Source, "fi.crash", func(context.Context, pgx.Tx, wharf.Event) error {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL) // the fault: this event kills its process
			select {}                                      // the signal is on its way
		}),
	)
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// eventData is the part of a body the handlers read.
type eventData struct {
	Poison  bool   `json:"poison"`
	SleepMS int    `json:"sleep_ms"`
	Hang    string `json:"hang"`
}

func data(ev wharf.Event) eventData {
	var body struct {
		Data eventData `json:"data"`
	}
	_ = json.Unmarshal(ev.Body, &body) // the test sends valid JSON; zero data otherwise
	return body.Data
}

// effect is the business write whose count per event the suite checks.
func effect(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
	return effects(ctx, tx, []wharf.Event{ev})
}

// effects writes the effects of several events in one statement.
func effects(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
	ids, types := make([]string, len(evs)), make([]string, len(evs))
	attempts, prior := make([]int32, len(evs)), make([]int32, len(evs))
	for i, ev := range evs {
		ids[i], types[i], attempts[i], prior[i] = ev.ID, ev.Type, int32(ev.Attempt), int32(len(ev.Errors))
	}
	_, err := tx.Exec(ctx, `INSERT INTO fi_effects (event_id, event_type, attempt, prior_errors, pid)
		SELECT *, $5 FROM unnest($1::text[], $2::text[], $3::int[], $4::int[])`, ids, types, attempts, prior, os.Getpid())
	return err
}

// call posts the event id to url; a status of 400 or more is a
// *breaker.StatusError (5xx counted by the breaker as the downstream's).
func call(ctx context.Context, client *http.Client, url, id string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"?id="+id, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return &breaker.StatusError{Code: resp.StatusCode}
	}
	return nil
}
