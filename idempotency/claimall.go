package idempotency

import (
	"context"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5"
)

// Pair is one (consumer, key) claim of ClaimAll.
type Pair struct {
	Consumer, Key string
}

// ClaimResult is ClaimAll's answer for one pair: First as Claim's first,
// or Err (ErrInvalidKey, ErrModeMismatch) for that pair alone.
type ClaimResult struct {
	First bool
	Err   error
}

// ClaimAll is Claim for many pairs at once: one INSERT for all of them in
// the caller's transaction tx, so that a consumer processing a batch of
// events in one transaction pays one statement for their claims instead
// of one each. The pairs are inserted in sorted order, so two transactions
// claiming overlapping sets cannot deadlock; a pair given twice is first
// only once. Results are in the order of pairs. An invalid pair, or one
// taken with Begin, gets its own error and does not stop the others. The
// error returned came from the database: tx is then aborted.
//
// Claims are rolled back with tx. A caller that claims before doing each
// pair's work under a savepoint of its own must remove the claims of the
// work that failed (rolling back to a savepoint taken after ClaimAll does
// not remove them).
func (s *Store) ClaimAll(ctx context.Context, tx pgx.Tx, pairs []Pair) ([]ClaimResult, error) {
	if tx == nil {
		return nil, &KeyError{Err: ErrInvalidArgument, Reason: "ClaimAll needs the caller's transaction, got nil"}
	}
	results := make([]ClaimResult, len(pairs))
	index := make(map[Pair][]int, len(pairs))
	var consumers, keys []string
	for i, p := range pairs {
		if err := validKey(p.Consumer, p.Key); err != nil {
			results[i].Err = err
			continue
		}
		if _, seen := index[p]; !seen {
			consumers = append(consumers, p.Consumer)
			keys = append(keys, p.Key)
		}
		index[p] = append(index[p], i)
	}
	if len(consumers) == 0 {
		return results, nil
	}
	sort.Sort(pairOrder{consumers, keys})
	rows, err := tx.Query(ctx, s.sql.claimAll, consumers, keys)
	if err != nil {
		return nil, fmt.Errorf("idempotency: claim %d pairs: %w", len(consumers), err)
	}
	var won Pair
	_, err = pgx.ForEachRow(rows, []any{&won.Consumer, &won.Key}, func() error {
		results[index[won][0]].First = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("idempotency: claim %d pairs: %w", len(consumers), err)
	}
	if len(index) == len(consumers) && allFirst(results, index) {
		return results, nil
	}
	return results, s.checkModes(ctx, tx, pairs, results, index)
}

// allFirst reports whether every distinct pair won its claim.
func allFirst(results []ClaimResult, index map[Pair][]int) bool {
	for _, at := range index {
		if !results[at[0]].First {
			return false
		}
	}
	return true
}

// checkModes tells, for the pairs that lost their claim, a duplicate from
// a key taken in the external mode; see modeSQL.
func (s *Store) checkModes(ctx context.Context, tx pgx.Tx, pairs []Pair, results []ClaimResult, index map[Pair][]int) error {
	var consumers, keys []string
	for p, at := range index {
		if !results[at[0]].First {
			consumers = append(consumers, p.Consumer)
			keys = append(keys, p.Key)
		}
	}
	rows, err := tx.Query(ctx, s.sql.modes, consumers, keys)
	if err != nil {
		return fmt.Errorf("idempotency: claim %d pairs: %w", len(pairs), err)
	}
	var p Pair
	var mode Mode
	_, err = pgx.ForEachRow(rows, []any{&p.Consumer, &p.Key, &mode}, func() error {
		if mode == ModeTx {
			return nil
		}
		for _, i := range index[p] {
			results[i].Err = &KeyError{Consumer: p.Consumer, Key: p.Key, Err: ErrModeMismatch, Mode: mode,
				Reason: fmt.Sprintf("the key was taken in the %s mode (Begin), not claimable with Claim", mode)}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("idempotency: claim %d pairs: %w", len(pairs), err)
	}
	return nil
}

// pairOrder sorts parallel consumer and key slices by (consumer, key).
type pairOrder struct{ consumers, keys []string }

func (o pairOrder) Len() int { return len(o.consumers) }
func (o pairOrder) Less(i, j int) bool {
	if o.consumers[i] != o.consumers[j] {
		return o.consumers[i] < o.consumers[j]
	}
	return o.keys[i] < o.keys[j]
}
func (o pairOrder) Swap(i, j int) {
	o.consumers[i], o.consumers[j] = o.consumers[j], o.consumers[i]
	o.keys[i], o.keys[j] = o.keys[j], o.keys[i]
}

// Unclaim removes claims that tx won with Claim or ClaimAll, for the work
// that failed after them; see ClaimAll. Give it only pairs tx claimed
// first: it deletes whatever tx-mode claim a pair has.
func (s *Store) Unclaim(ctx context.Context, tx pgx.Tx, pairs []Pair) error {
	if tx == nil {
		return &KeyError{Err: ErrInvalidArgument, Reason: "Unclaim needs the caller's transaction, got nil"}
	}
	if len(pairs) == 0 {
		return nil
	}
	consumers := make([]string, len(pairs))
	keys := make([]string, len(pairs))
	for i, p := range pairs {
		consumers[i], keys[i] = p.Consumer, p.Key
	}
	if _, err := tx.Exec(ctx, s.sql.unclaim, consumers, keys); err != nil {
		return fmt.Errorf("idempotency: unclaim %d pairs: %w", len(pairs), err)
	}
	return nil
}
