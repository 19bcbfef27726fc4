package console

import (
	"errors"
	"maps"
	"net/http"
	"strconv"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/dlq"
)

// listPage is the dead-letter list's data.
type listPage struct {
	Form     filterForm
	Filter   dlq.Filter
	Entries  []dlq.Entry
	Total    int64  // entries matching the filter, over every page
	Next     string // the next page's URL; "" on the last page
	First    string // the first page's URL; "" on the first page
	BulkLink string // the bulk replay confirmation's URL; "" unless dead entries match
	Unpinned string // the list without the bound of a bulk replay (Filter.UpTo)
	Statuses []dlq.Status
	// Replayed and Skipped report a bulk replay just done (Done is set).
	Done              bool
	Replayed, Skipped int
}

// dlqList serves GET /dlq: the entries matching the filter in the query,
// newest first, one keyset page at a time (dlq.Cursor in "after"). It
// shows no bodies, so it reads none (dlq.Page.OmitBody): a body can be
// megabytes.
func (c *Console) dlqList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	form := readFilter(q)
	f, err := form.filter()
	if err != nil {
		c.failErr(w, r, "the dead letter list", err)
		return
	}
	pg, err := readPage(q)
	if err != nil {
		c.failErr(w, r, "the dead letter list", err)
		return
	}
	pg.OmitBody = true
	entries, next, err := c.parts.dlq.List(r.Context(), f, pg)
	if err != nil {
		c.failErr(w, r, "the dead letter list", err)
		return
	}
	total, err := c.parts.dlq.Count(r.Context(), f)
	if err != nil {
		c.failErr(w, r, "the dead letter count", err)
		return
	}
	base := basePath(r) + "/dlq"
	page := listPage{Form: form, Filter: f, Entries: entries, Total: total,
		Statuses: []dlq.Status{dlq.StatusDead, dlq.StatusReplayed, dlq.StatusDiscarded}}
	links := form.values()
	if pg.Limit != dlq.DefaultListLimit {
		links.Set("limit", strconv.Itoa(pg.Limit))
	}
	if pg.After != nil {
		page.First = base + "?" + links.Encode()
	}
	if next != nil {
		nv := maps.Clone(links)
		nv.Set("after", next.String())
		page.Next = base + "?" + nv.Encode()
	}
	if f.UpTo != nil {
		unpinned := form
		unpinned.UpTo = ""
		page.Unpinned = base + "?" + unpinned.values().Encode()
	}
	if c.cfg.AllowActions && total > 0 && (f.Status == "" || f.Status == dlq.StatusDead) {
		page.BulkLink = base + "/replay?" + form.values().Encode()
	}
	if s := q.Get("replayed"); s != "" {
		page.Done = true
		page.Replayed, _ = strconv.Atoi(s)
		page.Skipped, _ = strconv.Atoi(q.Get("skipped"))
	}
	c.render(w, r, http.StatusOK, "dlq_list", "Dead letters", page)
}

// entryPage is the data of one dead letter's page.
type entryPage struct {
	Entry   dlq.Entry
	Headers []headerRow
	Body    bodyView
	Trail   *trailSection // nil without an audit log
	Done    string        // what an action just did: "replayed", "discarded", "skipped"
}

// doneMessages are the notices an action's redirect may ask the entry
// page for; anything else in "done" is ignored.
var doneMessages = map[string]bool{"replayed": true, "discarded": true, "skipped": true}

// dlqEntry serves GET /dlq/{id}: the entry's event, error history,
// headers (secrets masked), body and audit trail.
func (c *Console) dlqEntry(w http.ResponseWriter, r *http.Request) {
	e, ok := c.entry(w, r)
	if !ok {
		return
	}
	page := entryPage{Entry: e, Headers: c.mask.rows(e.Headers), Body: viewBody(e.Body)}
	if c.parts.audit != nil {
		page.Trail = c.trail(r.Context(), e.Source, e.EventID)
	}
	if d := r.URL.Query().Get("done"); doneMessages[d] {
		page.Done = d
	}
	c.render(w, r, http.StatusOK, "dlq_entry", "Dead letter "+strconv.FormatInt(e.ID, 10), page)
}

// entry reads the entry named by the path's {id}; an id that is not a
// positive number or names no entry answers 404.
func (c *Console) entry(w http.ResponseWriter, r *http.Request) (dlq.Entry, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		c.fail(w, r, http.StatusNotFound, "no dead letter has the id "+strconv.Quote(r.PathValue("id")))
		return dlq.Entry{}, false
	}
	e, err := c.parts.dlq.Get(r.Context(), id)
	if errors.Is(err, dlq.ErrNotFound) {
		c.fail(w, r, http.StatusNotFound, "no dead letter has the id "+strconv.FormatInt(id, 10)+" (purged, or never there)")
		return dlq.Entry{}, false
	}
	if err != nil {
		c.failErr(w, r, "reading the dead letter", err)
		return dlq.Entry{}, false
	}
	return e, true
}

// EventsLink is the audit lookup's URL for the entry's event.
func (p entryPage) EventsLink(base string) string {
	return base + "/events?" + eventQuery(p.Entry.Source, p.Entry.EventID)
}

// stream is the entry's delivery stream, as the audit log names it.
func (p entryPage) Stream() string { return wharf.DeliveryStream(p.Entry.Source, p.Entry.EventID) }
