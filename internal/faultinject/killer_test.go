package faultinject

import (
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// killer is the fault of the crash scenarios: it kills each of its
// workers after a random 300-1500 ms of life (once ready, when set, has
// returned for it), and starts another in its place at once, until stop.
type killer struct {
	kills
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	workers []*node // those running now
	err     error   // of ready and of restarts; a worker's loop ends at its first
}

// startKilling starts a killer of workers, which restarts each with flags.
func (w *world) startKilling(workers []*node, flags []string, ready func(*node) error) *killer {
	k := &killer{stop: make(chan struct{}), workers: workers}
	for i := range workers {
		k.wg.Go(func() {
			for {
				k.mu.Lock()
				victim := k.workers[i]
				k.mu.Unlock()
				if ready != nil {
					if err := ready(victim); err != nil {
						k.fail(err)
						return
					}
				}
				select {
				case <-k.stop:
					return
				case <-time.After(time.Duration(300+rand.IntN(1200)) * time.Millisecond): // pacing the fault
				}
				n, err := w.replace(victim, &k.kills, flags...)
				if err != nil {
					k.fail(err)
					return
				}
				k.mu.Lock()
				k.workers[i] = n
				k.mu.Unlock()
			}
		})
	}
	return k
}

func (k *killer) fail(err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.err = errors.Join(k.err, err)
}

// finish stops the killing and returns the workers left running and what
// went wrong.
func (k *killer) finish() ([]*node, error) {
	close(k.stop)
	k.wg.Wait()
	return k.workers, k.err
}
