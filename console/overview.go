package console

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"

	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/queue"
)

// overviewPage is the overview's data. Each section is nil when the
// console lacks its piece, and carries its own error, so that one failing
// query hides only its own section.
type overviewPage struct {
	Queue      *queueSection
	DLQ        *dlqSection
	Breakers   *breakerSection
	Throughput *throughputSection
	Refresh    int     // seconds between automatic reloads; 0 for none
	Notice     *notice // what a pause or resume just did; nil for none
}

// queueSection is the queue's depth by source and by type, what is
// paused, and the types waiting without a handler.
type queueSection struct {
	Err       string
	Stats     queue.Stats
	Sources   []sourceRow
	Kinds     []kindRow
	Unhandled []unhandledRow
}

type sourceRow struct {
	Source string
	Paused bool // the source itself is paused (not one of its handlers)
	queue.SourceStats
}

type kindRow struct {
	queue.Kind
	queue.SourceStats
}

type unhandledRow struct {
	queue.Kind
	Count int64
}

type dlqSection struct {
	Err    string
	Counts []statusCount
}

type statusCount struct {
	Status dlq.Status
	Count  int64
}

type breakerSection struct {
	Statuses []breaker.Status
}

// throughputSection is the events handlers processed per minute, from
// their idempotency claims (processed_events), drawn as SVG bars (an
// inline style would need the CSP to allow inline styles).
type throughputSection struct {
	Err     string
	Minutes int
	Total   int64
	Max     int64
	Bars    []bar
}

type bar struct {
	X, Y, Height int
	Count        int64
	Label        string // "3m ago"
}

// chartHeight is the throughput chart's height in pixels; barWidth the
// width a minute takes.
const (
	chartHeight = 60
	barWidth    = 14
)

// refreshChoices are the automatic reload intervals the overview offers,
// in seconds (a <meta http-equiv="refresh">: no script).
var refreshChoices = []int{5, 15, 60}

// overview serves GET /: queue depth by state and source, the oldest due
// event's wait, the dead letters by status, the breakers and throughput.
func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var page overviewPage
	if s := r.URL.Query().Get("refresh"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || !slices.Contains(refreshChoices, n) {
			c.fail(w, r, http.StatusBadRequest, fmt.Sprintf("refresh %q is not one of %v (seconds)", s, refreshChoices))
			return
		}
		page.Refresh = n
	}
	page.Notice = pauseNotice(r.URL.Query())
	if q := c.parts.queue; q != nil {
		page.Queue = c.queueSection(ctx, q)
	}
	if d := c.parts.dlq; d != nil {
		page.DLQ = c.dlqSection(ctx, d)
	}
	if b := c.parts.breakers; b != nil {
		page.Breakers = &breakerSection{Statuses: b.Statuses()}
	}
	if c.parts.idem != nil {
		page.Throughput = c.throughputSection(ctx)
	}
	c.render(w, r, http.StatusOK, "overview", "Overview", page)
}

func (c *Console) queueSection(ctx context.Context, q *queue.Queue) *queueSection {
	st, err := q.Stats(ctx)
	if err != nil {
		return &queueSection{Err: c.sectionErr(ctx, "queue stats", err)}
	}
	s := &queueSection{Stats: st}
	paused := map[string]bool{}
	for _, p := range st.Paused {
		if p.Source != "" {
			paused[p.Source] = true
		}
	}
	for _, src := range slices.Sorted(maps.Keys(st.BySource)) {
		s.Sources = append(s.Sources, sourceRow{src, paused[src], st.BySource[src]})
	}
	for _, k := range sortedKinds(st.ByKind) {
		s.Kinds = append(s.Kinds, kindRow{k, st.ByKind[k]})
	}
	for _, k := range sortedKinds(st.Unhandled) {
		s.Unhandled = append(s.Unhandled, unhandledRow{k, st.Unhandled[k]})
	}
	return s
}

// sortedKinds returns m's kinds by source, then type.
func sortedKinds[V any](m map[queue.Kind]V) []queue.Kind {
	return slices.SortedFunc(maps.Keys(m), func(a, b queue.Kind) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Type, b.Type))
	})
}

func (c *Console) dlqSection(ctx context.Context, d *dlq.DLQ) *dlqSection {
	s := &dlqSection{}
	for _, status := range []dlq.Status{dlq.StatusDead, dlq.StatusReplayed, dlq.StatusDiscarded} {
		n, err := d.Count(ctx, dlq.Filter{Status: status})
		if err != nil {
			return &dlqSection{Err: c.sectionErr(ctx, "dead letter counts", err)}
		}
		s.Counts = append(s.Counts, statusCount{status, n})
	}
	return s
}

func (c *Console) throughputSection(ctx context.Context) *throughputSection {
	minutes := c.cfg.ThroughputMinutes
	counts, err := c.parts.idem.ProcessedPerMinute(ctx, minutes)
	if err != nil {
		return &throughputSection{Err: c.sectionErr(ctx, "throughput", err)}
	}
	s := &throughputSection{Minutes: minutes, Max: 1}
	for _, n := range counts {
		s.Total += n
		s.Max = max(s.Max, n)
	}
	for i, n := range counts {
		h := int(n * chartHeight / s.Max)
		if n > 0 {
			h = max(h, 2) // a minute with work is never invisible
		}
		ago := minutes - 1 - i
		label := "this minute"
		if ago > 0 {
			label = fmt.Sprintf("%dm ago", ago)
		}
		s.Bars = append(s.Bars, bar{X: i * barWidth, Y: chartHeight - h, Height: h, Count: n, Label: label})
	}
	return s
}

// sectionErr logs a section's error and returns what the page says.
func (c *Console) sectionErr(ctx context.Context, what string, err error) string {
	c.log.ErrorContext(ctx, "console: "+what, "error", err)
	return what + " could not be read; the error is in the service's log"
}

// ChartWidth is the throughput chart's width in pixels.
func (s *throughputSection) ChartWidth() int { return s.Minutes * barWidth }

// ChartHeight is the throughput chart's height in pixels.
func (s *throughputSection) ChartHeight() int { return chartHeight }

// BarWidth is one bar's width in pixels, a gap included.
func (s *throughputSection) BarWidth() int { return barWidth - 2 }

// RefreshChoices lists the automatic reload intervals offered.
func (p overviewPage) RefreshChoices() []int { return refreshChoices }
