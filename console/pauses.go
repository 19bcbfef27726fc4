package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/wharfhq/wharf/queue"
)

// pauseNotices are the notices a pause or resume's redirect may ask the
// overview for, besides the warning of pauseNotice; anything else in
// "done" is ignored.
var pauseNotices = map[string]notice{
	"paused":  {Text: "Paused (listed below): from their next fetch, workers on every replica leave its events in the queue; events already running finish, and new ones are still stored."},
	"resumed": {Text: "Resumed: idle workers take the waiting events at their next poll."},
	"skipped": {Text: "Nothing done: it was not paused (resumed meanwhile).", Warn: true},
}

// notice is the line an action's redirect shows at the top of a page.
type notice struct {
	Text string
	Warn bool // nothing was done
}

// pauseTarget reads what a pause or resume form names: its kind (source
// or handler) and its name, trimmed of spaces like the reason and the
// filters ("stripe " would pause nothing of "stripe"). The queue checks
// the name itself.
func pauseTarget(kind, name string) (queue.PauseTarget, error) {
	name = strings.TrimSpace(name)
	switch kind {
	case "source":
		return queue.PauseTarget{Source: name}, nil
	case "handler":
		return queue.PauseTarget{Handler: name}, nil
	default:
		return queue.PauseTarget{}, &badRequest{`kind "` + kind + `" is neither "source" nor "handler"`}
	}
}

// pauseNotice is the notice the overview shows for the query of a pause or
// resume's redirect: one of pauseNotices, or, for "unused", the warning
// that the target paused (kind and name) is likely misspelled. It is nil
// for anything else.
func pauseNotice(q url.Values) *notice {
	done := q.Get("done")
	if done == "unused" {
		t, err := pauseTarget(q.Get("kind"), q.Get("name"))
		if err != nil {
			return nil
		}
		return &notice{Text: fmt.Sprintf("Paused (listed below), with a warning: no queued event, dead letter or processed event has %s: is it misspelled? "+
			"The queue and dead-letter tables show the names in use; paused anyway, as a pause before any traffic is legitimate.", t), Warn: true}
	}
	if n, ok := pauseNotices[done]; ok {
		return &n
	}
	return nil
}

// pauseErr makes the queue's complaint about a target or reason a
// *badRequest, whose message the operator sees (400).
func pauseErr(err error) error {
	if errors.Is(err, queue.ErrInvalidPause) {
		return &badRequest{err.Error()}
	}
	return err
}

// pause serves POST /pauses: it pauses a source or a handler with the
// form's reason and redirects to the overview, which lists it, and warns,
// as wharf pause does, when no queued event, dead letter or processed
// event has the name (queue.InUse).
func (c *Console) pause(w http.ResponseWriter, r *http.Request) {
	kind := r.PostFormValue("kind")
	t, err := pauseTarget(kind, r.PostFormValue("name"))
	if err != nil {
		c.failErr(w, r, "the pause", err)
		return
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	// Not the request's context: an operator closing the tab must not
	// leave the outcome unknown.
	ctx := context.WithoutCancel(r.Context())
	if err := c.parts.queue.Pause(ctx, t, reason); err != nil {
		c.failErr(w, r, "the pause", pauseErr(err))
		return
	}
	done := url.Values{"done": {"paused"}}
	used, err := c.parts.queue.InUse(ctx, t)
	switch {
	case err != nil:
		// The pause is made: the page says so, without the warning.
		c.log.ErrorContext(r.Context(), "console: pause: the check for a misspelled name failed", "target", t.String(), "error", err)
	case !used:
		done = url.Values{"done": {"unused"}, "kind": {kind}, "name": {t.Source + t.Handler}} // one of the two is ""
	}
	c.log.InfoContext(r.Context(), "console: pause", "target", t.String(), "reason", reason, "in_use", used)
	c.redirectToPauses(w, r, done)
}

// resume serves POST /pauses/resume and redirects to the overview, whose
// notice says whether the target was still paused.
func (c *Console) resume(w http.ResponseWriter, r *http.Request) {
	t, err := pauseTarget(r.PostFormValue("kind"), r.PostFormValue("name"))
	if err != nil {
		c.failErr(w, r, "the resume", err)
		return
	}
	was, err := c.parts.queue.Resume(context.WithoutCancel(r.Context()), t)
	if err != nil {
		c.failErr(w, r, "the resume", pauseErr(err))
		return
	}
	c.log.InfoContext(r.Context(), "console: resume", "target", t.String(), "was_paused", was)
	done := "resumed"
	if !was {
		done = "skipped"
	}
	c.redirectToPauses(w, r, url.Values{"done": {done}})
}

// redirectToPauses answers a pause or resume with 303 to the overview's
// list of pauses, with the query q that names its notice (pauseNotice).
func (c *Console) redirectToPauses(w http.ResponseWriter, r *http.Request, q url.Values) {
	http.Redirect(w, r, basePath(r)+"/?"+q.Encode()+"#pauses", http.StatusSeeOther)
}
