package queue

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// gatherYields is how many times a committer with an empty channel lets
// other goroutines run before it writes what it has: callers answered by
// the previous commit are often just about to send their next request, and
// waiting for them doubles the batch at no measurable cost in latency,
// where a timer would cost a tick at low load.
const gatherYields = 3

// commitTimeout bounds one group-commit write. Callers give up on their own
// deadlines; this only keeps a committer from hanging on a dead server.
const commitTimeout = 30 * time.Second

// committer batches concurrent Enqueue calls into one INSERT and one commit
// (group commit). Each of Config.Committers goroutines takes the first
// waiting request, gathers whatever else is already waiting, up to
// MaxCommitBatch, and writes them together; while one batch waits for its
// fsync the next one forms. No request waits for a timer.
type committer struct {
	q        *Queue
	requests chan *enqueueRequest

	startOnce sync.Once
	mu        sync.RWMutex // held for reading while sending, for writing by close
	closed    bool
	wg        sync.WaitGroup
}

type enqueueRequest struct {
	ctx   context.Context
	ev    *NewEvent
	reply chan enqueueReply // buffered: a committer never blocks on a caller
}

type enqueueReply struct {
	res EnqueueResult
	err error
}

func newCommitter(q *Queue) *committer {
	return &committer{q: q, requests: make(chan *enqueueRequest)}
}

func (c *committer) submit(ctx context.Context, ev *NewEvent) (EnqueueResult, error) {
	c.startOnce.Do(func() {
		for range c.q.cfg.Committers {
			c.wg.Add(1)
			go c.run()
		}
	})
	req := &enqueueRequest{ctx: ctx, ev: ev, reply: make(chan enqueueReply, 1)}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return EnqueueResult{}, ErrClosed
	}
	select {
	case c.requests <- req:
		c.mu.RUnlock()
	case <-ctx.Done():
		c.mu.RUnlock()
		return EnqueueResult{}, fmt.Errorf("queue: enqueue event %q from %q: %w (nothing was stored)", ev.ID, ev.Source, ctx.Err())
	}
	select {
	case r := <-req.reply:
		return r.res, r.err
	case <-ctx.Done():
		return EnqueueResult{}, fmt.Errorf("queue: enqueue event %q from %q: %w (the event may have been stored; a retry is deduplicated)", ev.ID, ev.Source, ctx.Err())
	}
}

// close answers every request already sent, then stops the committers.
func (c *committer) close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.requests)
	}
	c.mu.Unlock()
	// A first submit may be starting the committers right now: through
	// startOnce, their wg.Add happens before this Wait, as a WaitGroup
	// needs; a submit that has not started them by then starts none, and
	// finds the committer closed.
	c.startOnce.Do(func() {})
	c.wg.Wait()
}

func (c *committer) run() {
	defer c.wg.Done()
	batch := make([]*enqueueRequest, 0, c.q.cfg.MaxCommitBatch)
	for first := range c.requests {
		batch = append(batch[:0], first)
		yields := 0
	gather:
		for len(batch) < cap(batch) {
			select {
			case req, ok := <-c.requests:
				if !ok {
					break gather
				}
				batch = append(batch, req)
			default:
				if yields == gatherYields {
					break gather
				}
				yields++
				runtime.Gosched()
			}
		}
		c.write(batch)
	}
}

// write stores one batch and answers each request. A request whose caller
// already gave up is left out. If the batch statement fails, every event
// is retried on its own, so each caller gets its own answer and one bad row
// cannot fail the rest.
func (c *committer) write(batch []*enqueueRequest) {
	live := batch[:0]
	for _, req := range batch {
		if err := req.ctx.Err(); err != nil {
			req.reply <- enqueueReply{err: fmt.Errorf("queue: enqueue event %q from %q: %w (nothing was stored)", req.ev.ID, req.ev.Source, err)}
			continue
		}
		live = append(live, req)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()

	evs := make([]*NewEvent, len(live))
	for i, req := range live {
		evs[i] = req.ev
	}
	results, err := c.q.insert(ctx, c.q.pool, true, evs)
	if err != nil && len(live) > 1 {
		c.q.cfg.Logger.Warn("queue: group commit failed; writing its events one by one",
			"events", len(live), "error", err)
		stored := false
		for _, req := range live {
			res, err := c.q.insert(ctx, c.q.pool, true, []*NewEvent{req.ev})
			if err == nil {
				req.reply <- enqueueReply{res: res[0]}
				stored = stored || !res[0].Duplicate
			} else {
				req.reply <- enqueueReply{err: err}
			}
		}
		if stored {
			c.q.Notify()
		}
		return
	}
	if err != nil {
		live[0].reply <- enqueueReply{err: err}
		return
	}
	stored := false
	for i, req := range live {
		req.reply <- enqueueReply{res: results[i]}
		stored = stored || !results[i].Duplicate
	}
	if stored {
		c.q.Notify()
	}
}
