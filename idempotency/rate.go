package idempotency

import (
	"context"
	"fmt"
)

// MaxRateMinutes bounds the minutes ProcessedPerMinute looks back over:
// a day.
const MaxRateMinutes = 24 * 60

// ProcessedPerMinute counts the keys processed in each of the last minutes
// minutes, oldest first: the last element counts the 60 seconds up to now,
// the one before it the 60 seconds before those, and so on (minutes are
// counted back from now by the database's clock, not aligned to the
// clock's minutes). A key counts when its claim committed (tx mode) or its
// side effect finished (external mode); keys in progress do not count.
// A wharf Pipeline's handlers claim one key per processed event, so this
// is its throughput (operators' dashboards); keys pruned already are gone,
// so it sees back at most Config.Retention. minutes must be in
// 1..MaxRateMinutes, or the error wraps ErrInvalidArgument.
func (s *Store) ProcessedPerMinute(ctx context.Context, minutes int) ([]int64, error) {
	if minutes < 1 || minutes > MaxRateMinutes {
		return nil, fmt.Errorf("%w: minutes %d is outside 1..%d", ErrInvalidArgument, minutes, MaxRateMinutes)
	}
	rows, err := s.pool.Query(ctx, s.sql.perMinute, minutes)
	if err != nil {
		return nil, fmt.Errorf("idempotency: processed per minute: %w", err)
	}
	defer rows.Close()
	counts := make([]int64, minutes)
	for rows.Next() {
		var ago int
		var n int64
		if err := rows.Scan(&ago, &n); err != nil {
			return nil, fmt.Errorf("idempotency: processed per minute: %w", err)
		}
		// A key stamped after this statement's now() (its transaction
		// started later) counts in the last minute.
		if i := minutes - 1 - max(ago, 0); i >= 0 {
			counts[i] += n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("idempotency: processed per minute: %w", err)
	}
	return counts, nil
}
