package wharf

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/queue"
)

// An event stamped by a database whose clock runs ahead of this process's
// reports no wait, not a negative one (which a histogram of seconds would
// take as data).
func TestAttemptQueueWaitIsNeverNegative(t *testing.T) {
	start := time.Now()
	ahead := &queue.Event{Source: "acme", ID: "evt_1", Type: "order.paid", Attempt: 1, MaxAttempts: 5, ReceivedAt: start.Add(40 * time.Millisecond)}
	require.Zero(t, attemptOf(ahead, nil, start).QueueWait)

	waited := &queue.Event{Source: "acme", ID: "evt_2", Type: "order.paid", Attempt: 1, MaxAttempts: 5, ReceivedAt: start.Add(-3 * time.Second)}
	require.Equal(t, 3*time.Second, attemptOf(waited, nil, start).QueueWait)
}
