package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/internal/sqlschema"
	"github.com/wharfhq/wharf/queue"
)

var dlqCommand = &command{
	name:    "dlq",
	summary: "inspect, replay, discard and purge dead letters",
	help: `wharf dlq works on the dead letter queue (wharf.dead_letters): events that
failed every attempt, kept whole with every attempt's error. An entry is dead
until it is replayed (sent back to the queue, attempts reset) or discarded
(set aside); replayed and discarded entries stay for audit until purged.`,
	subcommands: []*command{dlqListCommand, dlqShowCommand, dlqReplayCommand, dlqDiscardCommand, dlqPurgeCommand},
}

// withDLQ runs fn with the dead letter queue of a migrated schema.
func (o *dbOptions) withDLQ(ctx context.Context, cfg dlq.Config, fn func(pool *pgxpool.Pool, d *dlq.DLQ) error) error {
	return o.withPool(ctx, func(pool *pgxpool.Pool) error {
		cfg.Schema = o.schema
		d, err := dlq.New(pool, cfg)
		if err != nil {
			return err
		}
		return fn(pool, d)
	})
}

// filterFlags registers the flags that select entries, shared by ls and
// replay.
func filterFlags(fs *flag.FlagSet, f *dlq.Filter) {
	fs.Func("source", "only entries of this source", nonEmpty(&f.Source))
	fs.Func("type", "only entries of this event type", nonEmpty(&f.Type))
	fs.Func("handler", "only entries of this handler (e.g. stripe/invoice.paid)", nonEmpty(&f.Handler))
	fs.Func("error", "only entries with an attempt whose error contains this text (case-insensitive)", nonEmpty(&f.ErrorContains))
	fs.Func("since", "only entries that died at or after this time: RFC 3339 (2024-05-01T10:00:00Z) or a duration ago (24h)", timeFlag(&f.Since))
	fs.Func("until", "only entries that died before this time: RFC 3339 or a duration ago", timeFlag(&f.Until))
}

// nonEmpty sets *s to a filter flag's value, refusing an empty one: an
// empty filter matches every entry, and a typo or an unset variable
// (--handler "$HANDLER") must not turn a replay of some into a replay of
// all. (Dead letters of events no handler took have an empty handler,
// which this cannot select.)
func nonEmpty(s *string) func(string) error {
	return func(v string) error {
		if v == "" {
			return errors.New("is empty; leave the flag out to match every entry")
		}
		*s = v
		return nil
	}
}

// checkTimeRange refuses a --since that is not before --until, which
// would match nothing, with both times in RFC 3339 (a duration is turned
// into a time that long ago, so --since 1h --until 2h is reversed).
func checkTimeRange(path string, f dlq.Filter) error {
	if f.Since.IsZero() || f.Until.IsZero() || f.Since.Before(f.Until) {
		return nil
	}
	return &usageError{path, fmt.Errorf("-since %s is not before -until %s (a duration means that long ago: --since 2h --until 1h)",
		f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))}
}

// timeFlag parses an RFC 3339 time, or a duration meaning that long ago.
func timeFlag(t *time.Time) func(string) error {
	return func(s string) error {
		if d, err := time.ParseDuration(s); err == nil {
			*t = time.Now().Add(-d)
			return nil
		}
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return errors.New("want an RFC 3339 time (2024-05-01T10:00:00Z) or a duration ago (24h)")
		}
		*t = v
		return nil
	}
}

// formatCursor and parseCursor give a dlq.Cursor the text form that ls
// prints and --after reads: the entry's dead_at in Unix microseconds (the
// database's precision) and its id.
func formatCursor(c *dlq.Cursor) string {
	return strconv.FormatInt(c.DeadAt.UnixMicro(), 10) + "-" + strconv.FormatInt(c.ID, 10)
}

func parseCursor(s string) (*dlq.Cursor, error) {
	at, id, ok := strings.Cut(s, "-")
	micros, err1 := strconv.ParseInt(at, 10, 64)
	n, err2 := strconv.ParseInt(id, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return nil, errors.New("want the cursor printed by the previous page")
	}
	return &dlq.Cursor{DeadAt: time.UnixMicro(micros), ID: n}, nil
}

var dlqListCommand = &command{
	name:    "ls",
	summary: "list dead letters, newest first",
	help: `Lists dead-letter entries, newest first, a page at a time: when more match, the
cursor of the next page is printed on stderr (and is "next" in --json).

Examples:
  wharf dlq ls
  wharf dlq ls --source stripe --error timeout --since 24h
  wharf dlq ls --handler billing/invoice.paid --status replayed --json
  wharf dlq ls --limit 100 --after 1714557600000000-42`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		var f dlq.Filter
		filterFlags(fs, &f)
		fs.Func("status", "only entries with this status: dead (the default), replayed or discarded", func(s string) error {
			f.Status = dlq.Status(s)
			if !slices.Contains([]dlq.Status{dlq.StatusDead, dlq.StatusReplayed, dlq.StatusDiscarded}, f.Status) {
				return errors.New("want dead, replayed or discarded")
			}
			return nil
		})
		p := dlq.Page{OmitBody: true} // ls shows no bodies
		fs.IntVar(&p.Limit, "limit", dlq.DefaultListLimit, fmt.Sprintf("the most entries to list, 1 to %d", dlq.MaxListLimit))
		fs.Func("after", "list the page after this cursor (printed after the previous page)", func(s string) (err error) {
			p.After, err = parseCursor(s)
			return err
		})
		asJSON := fs.Bool("json", false, `print {"entries": [...], "next": cursor or null}`)
		return func(ctx context.Context, e *env, _ []string) error {
			if p.Limit < 1 || p.Limit > dlq.MaxListLimit {
				return &usageError{"wharf dlq ls", fmt.Errorf("-limit %d: want 1 to %d", p.Limit, dlq.MaxListLimit)}
			}
			if err := checkTimeRange("wharf dlq ls", f); err != nil {
				return err
			}
			return db.withDLQ(ctx, dlq.Config{}, func(_ *pgxpool.Pool, d *dlq.DLQ) error {
				entries, next, err := d.List(ctx, f, p)
				if err != nil {
					return err
				}
				var cursor *string
				if next != nil {
					c := formatCursor(next)
					cursor = &c
				}
				if *asJSON {
					out := struct {
						Entries []entryOutput `json:"entries"`
						Next    *string       `json:"next"`
					}{Entries: []entryOutput{}, Next: cursor}
					for _, en := range entries {
						out.Entries = append(out.Entries, newEntryOutput(en))
					}
					return printJSON(e.stdout, out)
				}
				if err := printEntries(e.stdout, entries); err != nil {
					return err
				}
				if cursor != nil {
					fmt.Fprintf(e.stderr, "more entries: add --after %s\n", *cursor)
				}
				return nil
			})
		}
	},
}

// entryOutput is a dlq.Entry as JSON, with its secrets masked and its body
// as text when it is UTF-8 (base64 otherwise).
type entryOutput struct {
	ID             int64                `json:"id"`
	Source         string               `json:"source"`
	EventID        string               `json:"event_id"`
	Type           string               `json:"type"`
	OrderingKey    string               `json:"ordering_key,omitempty"`
	Handler        string               `json:"handler"`
	Status         dlq.Status           `json:"status"`
	Attempts       int                  `json:"attempts"`
	MaxAttempts    int                  `json:"max_attempts"`
	ReceivedAt     time.Time            `json:"received_at"`
	DeadAt         time.Time            `json:"dead_at"`
	ReplayCount    int                  `json:"replay_count"`
	LastReplayedAt *time.Time           `json:"last_replayed_at"`
	DiscardedAt    *time.Time           `json:"discarded_at"`
	Errors         []queue.AttemptError `json:"errors"`
	Headers        http.Header          `json:"headers"`
}

func newEntryOutput(en dlq.Entry) entryOutput {
	return entryOutput{
		ID: en.ID, Source: en.Source, EventID: en.EventID, Type: en.Type, OrderingKey: en.OrderingKey,
		Handler: en.Handler, Status: en.Status, Attempts: en.Attempts, MaxAttempts: en.MaxAttempts,
		ReceivedAt: en.ReceivedAt, DeadAt: en.DeadAt, ReplayCount: en.ReplayCount,
		LastReplayedAt: en.LastReplayedAt, DiscardedAt: en.DiscardedAt,
		Errors: en.Errors, Headers: maskHeaders(en.Headers),
	}
}

func printEntries(w io.Writer, entries []dlq.Entry) error {
	return printList(w, "no entries", "ID\tDEAD AT\tSOURCE\tTYPE\tEVENT\tHANDLER\tATTEMPTS\tSTATUS\tLAST ERROR", entries, func(tw io.Writer, en dlq.Entry) {
		last := ""
		if len(en.Errors) > 0 {
			last = en.Errors[len(en.Errors)-1].Error
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", en.ID, en.DeadAt.Local().Format(time.DateTime),
			cell(en.Source), cell(en.Type), cell(en.EventID), cell(en.Handler), en.Attempts, en.Status, truncate(last, 60))
	})
}

const masked = "[masked]"

// maskHeaders returns h with the values of credentials and signatures
// masked (dlq.SecretHeader, the rule of the web console's entry page too).
func maskHeaders(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for name, values := range h {
		if dlq.SecretHeader(name) {
			values = slices.Repeat([]string{masked}, len(values))
		}
		out[name] = values
	}
	return out
}

// parseIDs reads entry ids from the command line, each once: an id given
// twice is one entry, not one done and one skipped.
func parseIDs(path string, args []string) ([]int64, error) {
	ids := make([]int64, 0, len(args))
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id < 1 {
			return nil, &usageError{path, fmt.Errorf("%q is not an entry id (wharf dlq ls lists them)", a)}
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// entryNotFound is the error for an id that names no entry.
func entryNotFound(id int64) error {
	return fmt.Errorf("dead-letter entry %d not found (wharf dlq ls --status dead|replayed|discarded lists them)", id)
}

// getEntry is d.Get with an error that names the id plainly.
func getEntry(ctx context.Context, d *dlq.DLQ, id int64) (dlq.Entry, error) {
	en, err := d.Get(ctx, id)
	if errors.Is(err, dlq.ErrNotFound) {
		return en, entryNotFound(id)
	}
	return en, err
}

// requireEntries fails on the first id that names no entry, so a typo is
// an error rather than a silent skip. It reads ids only: an entry's body
// can be megabytes.
func requireEntries(ctx context.Context, pool *pgxpool.Pool, schema string, ids []int64) error {
	var missing []int64
	rows, err := pool.Query(ctx, sqlschema.Render(missingEntriesSQL, schema), ids)
	if err == nil {
		missing, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	if err != nil {
		return fmt.Errorf("look for the entries: %w", err)
	}
	if len(missing) > 0 {
		return entryNotFound(missing[0])
	}
	return nil
}

var dlqShowCommand = &command{
	name:    "show",
	summary: "show one dead letter: its errors, headers and body",
	args:    " ID",
	help: `Shows one dead-letter entry: what it is, every failed attempt's error, the
headers as received and the raw body (indented when it is JSON). Control
characters are shown escaped, as in Go strings (\x1b, and \n outside the
body), here and in every table; --json leaves them to JSON's own escaping.

Credentials and signatures are masked, as on the web console's entry page:
X-Trello-Webhook, X-Amzn-Oidc-Data and every header whose name contains key,
auth, password, secret, token, signature, hmac, cookie, session, credential,
verification, -sig, hash, jwt or assertion (Authorization, X-Api-Key, Cookie,
Stripe-Signature, X-Hub-Signature-256, X-Shopify-Hmac-Sha256, X-Gitlab-Token,
Verif-Hash, Cf-Access-Jwt-Assertion, ...).

Examples:
  wharf dlq show 42
  wharf dlq show --json 42 | jq .body`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		asJSON := fs.Bool("json", false, `print the entry as one JSON object; the body is "body" (text) or "body_base64"`)
		return func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return &usageError{"wharf dlq show", errors.New("want one entry id")}
			}
			ids, err := parseIDs("wharf dlq show", args)
			if err != nil {
				return err
			}
			return db.withDLQ(ctx, dlq.Config{}, func(_ *pgxpool.Pool, d *dlq.DLQ) error {
				en, err := getEntry(ctx, d, ids[0])
				if err != nil {
					return err
				}
				if *asJSON {
					out := struct {
						entryOutput
						Body       *string `json:"body,omitempty"`
						BodyBase64 []byte  `json:"body_base64,omitempty"`
					}{entryOutput: newEntryOutput(en)}
					if utf8.Valid(en.Body) {
						s := string(en.Body)
						out.Body = &s
					} else {
						out.BodyBase64 = en.Body
					}
					return printJSON(e.stdout, out)
				}
				return printEntry(e.stdout, en)
			})
		}
	},
}

func printEntry(w io.Writer, en dlq.Entry) error {
	optTime := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.Local().Format(time.DateTime)
	}
	err := table(w, func(tw io.Writer) {
		fmt.Fprintf(tw, "entry\t%d (%s)\n", en.ID, en.Status)
		fmt.Fprintf(tw, "source\t%s\n", cell(en.Source))
		fmt.Fprintf(tw, "event\t%s\n", cell(en.EventID))
		fmt.Fprintf(tw, "type\t%s\n", cell(en.Type))
		fmt.Fprintf(tw, "handler\t%s\n", cell(en.Handler))
		fmt.Fprintf(tw, "ordering key\t%s\n", cell(cmp.Or(en.OrderingKey, "-")))
		fmt.Fprintf(tw, "received\t%s\n", en.ReceivedAt.Local().Format(time.DateTime))
		fmt.Fprintf(tw, "dead since\t%s\n", en.DeadAt.Local().Format(time.DateTime))
		fmt.Fprintf(tw, "attempts\t%d (max %d)\n", en.Attempts, en.MaxAttempts)
		fmt.Fprintf(tw, "replays\t%d (last %s)\n", en.ReplayCount, optTime(en.LastReplayedAt))
		fmt.Fprintf(tw, "discarded\t%s\n", optTime(en.DiscardedAt))
		fmt.Fprintln(tw, "\nERRORS\nATTEMPT\tAT\tWORKER\tERROR")
		for _, ae := range en.Errors {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", ae.Attempt, ae.At.Local().Format(time.DateTime), cell(cmp.Or(ae.Worker, "-")), cell(ae.Error))
		}
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nHEADERS")
	h := maskHeaders(en.Headers)
	for _, name := range slices.Sorted(maps.Keys(h)) {
		for _, v := range h[name] {
			fmt.Fprintf(w, "%s: %s\n", cell(name), cell(v))
		}
	}
	var pretty bytes.Buffer
	switch {
	case json.Indent(&pretty, en.Body, "", "  ") == nil:
		fmt.Fprintf(w, "\nBODY (%d bytes, JSON, indented here; stored verbatim)\n%s\n", len(en.Body), textBlock(pretty.String()))
	case utf8.Valid(en.Body):
		fmt.Fprintf(w, "\nBODY (%d bytes)\n%s\n", len(en.Body), textBlock(string(en.Body)))
	default:
		fmt.Fprintf(w, "\nBODY (%d bytes, binary)\n%s", len(en.Body), hex.Dump(en.Body))
	}
	return nil
}

// confirmation is the --yes and --confirm-above flags of a command that
// changes many entries at once.
type confirmation struct {
	yes   bool
	above int
}

// register defines the flags; done is what the command does to entries
// ("replayed").
func (c *confirmation) register(fs *flag.FlagSet, done string) {
	fs.BoolVar(&c.yes, "yes", false, "do not ask for confirmation")
	fs.IntVar(&c.above, "confirm-above", 10, "ask for confirmation when more entries than this would be "+done)
}

// ask asks question about n entries on stderr, unless --yes or n is at
// most --confirm-above. A no, or Ctrl-C, is an error that says nothing was
// done.
func (c confirmation) ask(ctx context.Context, e *env, n int64, question, done string) error {
	if c.yes || n <= int64(c.above) {
		return nil
	}
	ok, err := confirm(ctx, e, question)
	if err != nil {
		return fmt.Errorf("%w; nothing %s", err, done)
	}
	if !ok {
		return fmt.Errorf("%d entries not confirmed; nothing %s (--yes skips the question)", n, done)
	}
	return nil
}

// confirm asks a yes/no question on stderr and reads the answer from
// stdin; anything but y or yes (or no answer at all) is no. When ctx ends
// first (Ctrl-C), it returns ctx's error, which exits with the interrupt
// code; the read, which cannot be stopped, is left to end with the process.
func confirm(ctx context.Context, e *env, question string) (bool, error) {
	fmt.Fprintf(e.stderr, "%s [y/N] ", question)
	type answer struct {
		line string
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		line, err := bufio.NewReader(e.stdin).ReadString('\n')
		answered <- answer{line, err}
	}()
	var a answer
	select {
	case <-ctx.Done():
		fmt.Fprintln(e.stderr)
		return false, fmt.Errorf("no answer: %w", ctx.Err())
	case a = <-answered:
	}
	if a.err != nil && !errors.Is(a.err, io.EOF) {
		return false, fmt.Errorf("read the answer: %w", a.err)
	}
	reply := strings.ToLower(strings.TrimSpace(a.line))
	return reply == "y" || reply == "yes", nil
}
