package queue

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Length limits, in bytes. Source and event id form the unique key, and a
// btree entry must stay well under Postgres's limit of about 2.7 kB.
const (
	MaxSourceLen      = 100
	MaxIDLen          = 255
	MaxTypeLen        = 255
	MaxOrderingKeyLen = 255
	MaxHandlerLen     = 200
	// MaxMaxAttempts bounds NewEvent.MaxAttempts and Config.MaxAttempts.
	MaxMaxAttempts = 1000
)

// AnyType in a Kind matches every event type of its source. It cannot be an
// event's own type.
const AnyType = "*"

// NewEvent is an event to store, as received from a provider.
type NewEvent struct {
	// Source names the sender ("stripe", "github"). Required; with ID it
	// forms the deduplication key.
	Source string
	// ID is the provider's event id. Required.
	ID string
	// Type is the provider's event type ("invoice.paid"). Required; not "*".
	Type string
	// OrderingKey, when set, makes events of one source with the same key
	// run one at a time, in the order they were stored (see the package
	// documentation). Optional.
	OrderingKey string
	// Body is the raw request body, stored verbatim. Required (non-nil; may
	// be empty).
	Body []byte
	// Headers worth keeping, stored as received. Optional.
	Headers http.Header
	// MaxAttempts overrides Config.MaxAttempts for this event when non-zero.
	MaxAttempts int
	// RunAt delays the first attempt. Defaults to now.
	RunAt time.Time
	// Handler names what is to process the event, for operators and for
	// Config.DuplicateIf; the queue itself does not route by it. Optional,
	// at most MaxHandlerLen bytes.
	Handler string
}

// EnqueueResult is the outcome of storing one event.
type EnqueueResult struct {
	// QueueID is the new row's id; zero for a duplicate.
	QueueID int64
	// Duplicate is true when an event with the same source and id is
	// already queued (or kept as exhausted); nothing was written.
	Duplicate bool
}

// Kind selects events by source and type; Type AnyType matches every type
// of the source.
type Kind struct {
	Source string
	Type   string
}

// AttemptError is one failed attempt in an event's error history.
type AttemptError struct {
	Attempt int       `json:"attempt"`
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
	Worker  string    `json:"worker,omitempty"`
}

// Lease is a worker's claim on a fetched event. Only the holder of the
// current lease may complete, retry, defer or release the event; anyone
// else gets ErrLeaseLost.
type Lease struct {
	QueueID int64
	Token   int64
	// ExpiresAt is when the lease lapses unless extended, as set by the
	// database when it was granted or last extended by Queue.Heartbeat. A
	// Consumer's own heartbeats leave it as granted, since its handlers may
	// read the event while they run.
	ExpiresAt time.Time
}

// Event is a fetched event, leased to the caller.
type Event struct {
	QueueID     int64
	Source      string
	ID          string
	Type        string
	OrderingKey string
	Handler     string
	Body        []byte
	Headers     http.Header
	ReceivedAt  time.Time
	// Attempt is this attempt's number, from 1.
	Attempt     int
	MaxAttempts int
	// Errors holds every earlier failed attempt, oldest first.
	Errors []AttemptError
	// Rescued says the previous attempt's lease expired unfinished: its
	// worker died or hung, perhaps because of this very event. Fetch
	// returns a rescued event alone, and the Consumer runs it with nothing
	// else in flight in its process (waiting up to a second for that), so
	// an event that kills its worker every time spends only its own
	// attempts, not those of events leased beside it.
	Rescued bool
	// Deferrals counts the times the event was put back with DeferCounted:
	// runs that failed through no fault of its own and spent no attempt.
	// Defer and Release leave it as it is.
	Deferrals int
	Lease     Lease
	// Prepared holds what ConsumerConfig.Prepare left for the Handler;
	// nil without a Prepare.
	Prepared any

	// errorsJSON and headersJSON are the fetched row's JSON columns until
	// decodeColumns turns them into Errors and Headers.
	errorsJSON, headersJSON []byte
	// alone: a BatchHandler call holding this event failed, so it runs
	// through Handler from then on, in this transaction or the next.
	alone bool
	// fetchStarted is when the Consumer's fetch that leased it was sent:
	// its lease cannot lapse until LeaseDuration after that.
	fetchStarted time.Time
}

// decodeColumns fills Errors and Headers from the JSON columns the event
// was fetched with. An empty error history, the common case, is not sent
// through the JSON decoder.
func (ev *Event) decodeColumns() error {
	switch string(ev.errorsJSON) {
	case "":
	case "[]":
		ev.Errors = []AttemptError{}
	default:
		if err := json.Unmarshal(ev.errorsJSON, &ev.Errors); err != nil {
			return fmt.Errorf("event %d: decode error history: %w", ev.QueueID, err)
		}
	}
	if len(ev.headersJSON) > 0 {
		h, err := decodeHeaders(ev.headersJSON)
		if err != nil {
			return fmt.Errorf("event %d: decode headers: %w", ev.QueueID, err)
		}
		ev.Headers = h
	}
	ev.errorsJSON, ev.headersJSON = nil, nil
	return nil
}

// maxErrorLen caps each stored error message, so a huge panic stack cannot
// bloat the row that every fetch rewrites.
const maxErrorLen = 8 << 10

func truncateError(msg string) string {
	if len(msg) <= maxErrorLen {
		return msg
	}
	cut := maxErrorLen
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "… (truncated)"
}

// validate checks ev before it goes near a batch, so one bad event never
// fails its neighbours.
func (ev *NewEvent) validate() error {
	fail := func(field, reason string) error {
		return &InvalidEventError{Source: ev.Source, ID: ev.ID, Field: field, Reason: reason}
	}
	if reason := checkText(ev.Source, MaxSourceLen, true); reason != "" {
		return fail("source", reason)
	}
	if reason := checkText(ev.ID, MaxIDLen, true); reason != "" {
		return fail("id", reason)
	}
	if reason := checkText(ev.Type, MaxTypeLen, true); reason != "" {
		return fail("type", reason)
	}
	if ev.Type == AnyType {
		return fail("type", `"*" is reserved to mean any type`)
	}
	if reason := checkText(ev.OrderingKey, MaxOrderingKeyLen, false); reason != "" {
		return fail("ordering key", reason)
	}
	if reason := checkText(ev.Handler, MaxHandlerLen, false); reason != "" {
		return fail("handler", reason)
	}
	if ev.Body == nil {
		return fail("body", "is nil")
	}
	for name, values := range ev.Headers {
		if reason := checkText(name, 1<<10, true); reason != "" {
			return fail("headers", "name "+reason)
		}
		for _, v := range values {
			if reason := checkText(v, 16<<10, false); reason != "" {
				return fail("headers", name+" "+reason)
			}
		}
	}
	if ev.MaxAttempts < 0 || ev.MaxAttempts > MaxMaxAttempts {
		return fail("max attempts", "must be between 0 (the default) and 1000")
	}
	return nil
}

// checkText returns why s is unusable as a stored text value, or "".
// Postgres text cannot hold NUL bytes, and jsonb refuses \u0000 too.
func checkText(s string, maxLen int, required bool) string {
	switch {
	case s == "" && required:
		return "is empty"
	case len(s) > maxLen:
		return "is longer than " + strconv.Itoa(maxLen) + " bytes"
	case strings.IndexByte(s, 0) >= 0:
		return "contains a NUL byte"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	return ""
}
