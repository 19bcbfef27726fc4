package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/wharfhq/wharf/dlq"
)

// replay sends entries back to the queue: through the Pipeline, which
// records the replay in the audit trail, or through the DLQ into Queue.
func (p parts) replay(ctx context.Context, ids ...int64) (dlq.ReplayResult, error) {
	if p.pipeline != nil {
		return p.pipeline.Replay(ctx, ids...)
	}
	return p.dlq.Replay(ctx, p.queue, ids...)
}

// replayMatching is replay for every dead entry that matches f.
func (p parts) replayMatching(ctx context.Context, f dlq.Filter) (dlq.ReplayResult, error) {
	if p.pipeline != nil {
		return p.pipeline.ReplayMatching(ctx, f, dlq.ReplayOptions{})
	}
	return p.dlq.ReplayMatching(ctx, p.queue, f, dlq.ReplayOptions{})
}

// replayOne serves POST /dlq/{id}/replay and redirects to the entry page,
// which says whether it was replayed or was no longer dead.
func (c *Console) replayOne(w http.ResponseWriter, r *http.Request) {
	e, ok := c.entry(w, r)
	if !ok {
		return
	}
	// Not the request's context: an operator closing the tab must not
	// leave the outcome unknown.
	res, err := c.parts.replay(context.WithoutCancel(r.Context()), e.ID)
	if err != nil {
		c.failErr(w, r, "the replay", err)
		return
	}
	c.log.InfoContext(r.Context(), "console: replay", "entry", e.ID, "source", e.Source, "event", e.EventID, "replayed", res.Replayed)
	c.redirectToEntry(w, r, e.ID, res.Replayed == 1, "replayed")
}

// discardOne serves POST /dlq/{id}/discard.
func (c *Console) discardOne(w http.ResponseWriter, r *http.Request) {
	e, ok := c.entry(w, r)
	if !ok {
		return
	}
	n, err := c.parts.dlq.Discard(context.WithoutCancel(r.Context()), e.ID)
	if err != nil {
		c.failErr(w, r, "the discard", err)
		return
	}
	c.log.InfoContext(r.Context(), "console: discard", "entry", e.ID, "source", e.Source, "event", e.EventID, "discarded", n)
	c.redirectToEntry(w, r, e.ID, n == 1, "discarded")
}

// redirectToEntry answers an action with 303 to the entry's page, whose
// notice says done, or "skipped" when the entry was no longer dead.
func (c *Console) redirectToEntry(w http.ResponseWriter, r *http.Request, id int64, did bool, done string) {
	if !did {
		done = "skipped"
	}
	http.Redirect(w, r, basePath(r)+"/dlq/"+strconv.FormatInt(id, 10)+"?done="+done, http.StatusSeeOther)
}

// bulkPage is the bulk replay confirmation's data.
type bulkPage struct {
	Form   filterForm  // with UpTo pinned: the set the count was taken of
	Newest *dlq.Cursor // the newest entry of that set; nil when it is empty
	Count  int64
	List   string  // the list of the entries counted
	Notice *notice // why the page is shown again; nil the first time
}

// bulkFilter reads the filter of a bulk replay: dead entries only.
func bulkFilter(q url.Values) (filterForm, dlq.Filter, error) {
	form := readFilter(q)
	form.Status = ""
	f, err := form.filter()
	return form, f, err
}

// confirmBulkReplay serves GET /dlq/replay: how many dead entries the
// filter matches, and the form that replays them. It changes nothing. It
// pins the set to the newest entry the filter matches (dlq.DLQ.Pin), as
// wharf dlq replay does: entries that die after the operator saw the
// count are not replayed with the ones counted. The bound is the entry's
// own time of death as the database recorded it, not this process's
// clock, which may be behind (the count would leave out entries the list
// shows) or ahead (entries dying within the skew would join the set).
func (c *Console) confirmBulkReplay(w http.ResponseWriter, r *http.Request) {
	if !c.cfg.AllowActions {
		c.fail(w, r, http.StatusForbidden, "this console is read-only: the service has not enabled actions (Config.AllowActions)")
		return
	}
	form, f, err := bulkFilter(r.URL.Query())
	if err != nil {
		c.failErr(w, r, "the bulk replay", err)
		return
	}
	f, n, err := c.parts.dlq.Pin(r.Context(), f)
	if err != nil {
		c.failErr(w, r, "the dead letter count", err)
		return
	}
	if f.UpTo != nil {
		form.UpTo = f.UpTo.String()
	}
	c.render(w, r, http.StatusOK, "bulk_replay", "Replay dead letters", bulkPage{
		Form: form, Newest: f.UpTo, Count: n, List: basePath(r) + "/dlq?" + form.values().Encode(),
	})
}

// bulkReplay serves POST /dlq/replay: it replays every dead entry that
// matches the confirmed filter and redirects to the list of the replayed
// ones with the counts. The form carries the count the operator saw; when
// the pinned set holds another number now (an entry whose dead-lettering
// began before the page was loaded, and committed after), it replays
// nothing and shows the confirmation again, with the new count.
func (c *Console) bulkReplay(w http.ResponseWriter, r *http.Request) {
	form, f, err := bulkFilter(r.PostForm)
	if err != nil {
		c.failErr(w, r, "the bulk replay", err)
		return
	}
	seen, err := strconv.ParseInt(r.PostForm.Get("count"), 10, 64)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, "the form carries no count: replay from the confirmation page")
		return
	}
	if f.UpTo == nil {
		c.fail(w, r, http.StatusBadRequest, "the form does not pin the set it counted: replay from the confirmation page")
		return
	}
	n, err := c.parts.dlq.Count(r.Context(), f)
	if err != nil {
		c.failErr(w, r, "the dead letter count", err)
		return
	}
	if n != seen {
		c.render(w, r, http.StatusConflict, "bulk_replay", "Replay dead letters", bulkPage{
			Form: form, Newest: f.UpTo, Count: n, List: basePath(r) + "/dlq?" + form.values().Encode(),
			Notice: &notice{Text: fmt.Sprintf("Nothing replayed: %d dead letters match now, not the %d this page showed. Confirm again.", n, seen), Warn: true},
		})
		return
	}
	res, err := c.parts.replayMatching(context.WithoutCancel(r.Context()), f)
	if err != nil {
		c.failErr(w, r, "the bulk replay", err)
		return
	}
	c.log.InfoContext(r.Context(), "console: bulk replay", "filter", form.values().Encode(), "replayed", res.Replayed, "skipped", res.Skipped)
	v := form.values()
	v.Set("status", string(dlq.StatusReplayed))
	v.Set("replayed", strconv.Itoa(res.Replayed))
	v.Set("skipped", strconv.Itoa(res.Skipped))
	http.Redirect(w, r, basePath(r)+"/dlq?"+v.Encode(), http.StatusSeeOther)
}
