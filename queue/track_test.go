package queue

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// An event dropped or finished under a lease it lost must not stop the
// heartbeats of the new lease that this consumer may hold on the same
// event (fetched again after a rescue). Before, untrack went by queue id
// alone.
func TestUntrackLeavesANewerLeaseOfTheSameEvent(t *testing.T) {
	c := &Consumer{active: map[int64]*Event{}}
	stale := &Event{QueueID: 7, Lease: Lease{QueueID: 7, Token: 1}}
	c.track([]*Event{stale})
	fresh := &Event{QueueID: 7, Lease: Lease{QueueID: 7, Token: 2}}
	c.track([]*Event{fresh})
	c.untrack([]*Event{stale})
	require.Same(t, fresh, c.active[7], "the live lease is still heart-beaten")
	c.untrack([]*Event{fresh})
	require.Empty(t, c.active)
}
