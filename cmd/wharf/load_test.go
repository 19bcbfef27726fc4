package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPostgresUsed(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	before := map[int]procCPU{
		1: {start: 10, cpu: 500 * ms}, // the scratch database's backend
		2: {start: 10, cpu: 900 * ms}, // another database's, ends in the slice
		3: {start: 10, cpu: 300 * ms}, // the pid is reused by a new process
		4: {start: 10, cpu: 200 * ms}, // the WAL writer
	}
	after := map[int]procCPU{
		1: {start: 10, cpu: 700 * ms},
		3: {start: 99, cpu: 40 * ms},
		4: {start: 10, cpu: 250 * ms},
		5: {start: 99, cpu: 30 * ms},  // another database's, new
		6: {start: 99, cpu: 600 * ms}, // another database's, new
	}
	// In scope: the ended process does not take its lifetime's time off,
	// other databases' processes are left out, a reused pid counts from 0.
	used, seen := postgresUsed(before, after, map[int]bool{1: true, 3: true, 4: true})
	require.True(t, seen)
	require.Equal(t, 200*ms+40*ms+50*ms, used)
	// No scope, or none of it visible here: every process counts.
	for _, scope := range []map[int]bool{nil, {77: true}} {
		used, seen = postgresUsed(before, after, scope)
		require.True(t, seen)
		require.Equal(t, 200*ms+40*ms+50*ms+30*ms+600*ms, used)
	}
	_, seen = postgresUsed(before, nil, nil)
	require.False(t, seen)
}
