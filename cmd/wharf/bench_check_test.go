package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestIngestCheck: a run fails when a side did not accept every request,
// since its requests/s counts every answer; a clean run passes.
func TestIngestCheck(t *testing.T) {
	t.Parallel()
	clean := ingestSide{Requests: 100, Accepted: 100, Stored: 100, Errors: map[string]int64{}}
	require.NoError(t, ingestResult{Wharf: clean, Baseline: clean}.check())

	quick503 := ingestSide{Requests: 100, Accepted: 60, Stored: 60, Errors: map[string]int64{"503": 40}}
	err := ingestResult{Wharf: quick503, Baseline: clean}.check()
	require.ErrorContains(t, err, "wharf accepted 60 of 100 requests answered; errors by status: 503: 40")
	err = ingestResult{Wharf: clean, Baseline: quick503}.check()
	require.ErrorContains(t, err, "baseline accepted 60 of 100")

	// A transport error leaves no answer to count, only the error.
	lost := ingestSide{Requests: 100, Accepted: 100, Stored: 100, Errors: map[string]int64{"transport": 1}}
	require.ErrorContains(t, ingestResult{Wharf: clean, Baseline: lost}.check(), "transport: 1")

	unstored := ingestSide{Requests: 100, Accepted: 100, Stored: 99, Errors: map[string]int64{}}
	require.ErrorContains(t, ingestResult{Wharf: unstored, Baseline: clean}.check(), "wharf accepted 100 requests but stored 99 events")
}

// TestE2ECheck: the same for e2e, besides every accepted event processed
// once.
func TestE2ECheck(t *testing.T) {
	t.Parallel()
	clean := e2eSide{Requests: 50, Accepted: 50, Processed: 50, Errors: map[string]int64{}}
	require.NoError(t, e2eResult{Wharf: clean, Baseline: clean}.check())
	failed := e2eSide{Requests: 50, Accepted: 45, Processed: 45, Errors: map[string]int64{"503": 5}}
	require.ErrorContains(t, e2eResult{Wharf: failed, Baseline: clean}.check(), "wharf accepted 45 of 50 requests answered; errors by status: 503: 5")
	twice := e2eSide{Requests: 50, Accepted: 50, Processed: 51, Errors: map[string]int64{}}
	require.ErrorContains(t, e2eResult{Wharf: clean, Baseline: twice}.check(), "baseline accepted 50 events and processed 51")
}
