package console

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/wharfhq/wharf/queue"
)

// pauseNotices are the notices a pause or resume's redirect may ask the
// overview for; anything else in "done" is ignored.
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

// pauseTarget reads what a pause or resume form names: "kind" (source or
// handler) and "name". The queue checks the name itself.
func pauseTarget(r *http.Request) (queue.PauseTarget, error) {
	name := r.PostFormValue("name")
	switch kind := r.PostFormValue("kind"); kind {
	case "source":
		return queue.PauseTarget{Source: name}, nil
	case "handler":
		return queue.PauseTarget{Handler: name}, nil
	default:
		return queue.PauseTarget{}, &badRequest{`kind "` + kind + `" is neither "source" nor "handler"`}
	}
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
// form's reason and redirects to the overview, which lists it.
func (c *Console) pause(w http.ResponseWriter, r *http.Request) {
	t, err := pauseTarget(r)
	if err != nil {
		c.failErr(w, r, "the pause", err)
		return
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	// Not the request's context: an operator closing the tab must not
	// leave the outcome unknown.
	if err := c.parts.queue.Pause(context.WithoutCancel(r.Context()), t, reason); err != nil {
		c.failErr(w, r, "the pause", pauseErr(err))
		return
	}
	c.log.InfoContext(r.Context(), "console: pause", "target", t.String(), "reason", reason)
	c.redirectToPauses(w, r, "paused")
}

// resume serves POST /pauses/resume and redirects to the overview, whose
// notice says whether the target was still paused.
func (c *Console) resume(w http.ResponseWriter, r *http.Request) {
	t, err := pauseTarget(r)
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
	c.redirectToPauses(w, r, done)
}

// redirectToPauses answers a pause or resume with 303 to the overview's
// list of pauses, with the notice for done.
func (c *Console) redirectToPauses(w http.ResponseWriter, r *http.Request, done string) {
	http.Redirect(w, r, basePath(r)+"/?done="+done+"#pauses", http.StatusSeeOther)
}
