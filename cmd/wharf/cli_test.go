package main

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/testio"
)

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string // in stderr
		path string // of the command that refused
	}{
		{nil, "wharf: missing command", "wharf"},
		{[]string{"nope"}, `wharf: unknown command "nope"`, "wharf"},
		{[]string{"bench"}, "wharf bench: missing command", "wharf bench"},
		{[]string{"bench", "load"}, `wharf bench: unknown command "load"`, "wharf bench"},
		{[]string{"bench", "drain", "-bogus"}, "wharf bench drain: flag provided but not defined: -bogus", "wharf bench drain"},
		{[]string{"bench", "drain", "now"}, `wharf bench drain: unexpected argument "now"`, "wharf bench drain"},
		{[]string{"bench", "drain", "-n", "0"}, "wharf bench drain: -n 0: want at least 1 event", "wharf bench drain"},
		{[]string{"bench", "drain", "-n", "many"}, `wharf bench drain: invalid value "many" for flag -n`, "wharf bench drain"},
		{[]string{"bench", "drain", "-handler", "slow"}, `wharf bench drain: -handler "slow": want insert, batch or noop`, "wharf bench drain"},
		{[]string{"bench", "drain", "-procs", "-1"}, "wharf bench drain: -procs -1: want 0 (in this process) to 64", "wharf bench drain"},
		{[]string{"bench", "drain", "-n", "5", "-rounds", "6"}, "wharf bench drain: -rounds 6: want 1 to -n", "wharf bench drain"},
		{[]string{"bench", "ingest", "-c", "0"}, "wharf bench ingest: -c 0: want at least 1 sender", "wharf bench ingest"},
		{[]string{"bench", "ingest", "-d", "soon"}, `wharf bench ingest: invalid value "soon" for flag -d`, "wharf bench ingest"},
		{[]string{"bench", "ingest", "-d", "0s"}, "wharf bench ingest: -d 0s: want a positive duration", "wharf bench ingest"},
		{[]string{"bench", "e2e", "-handler", "x"}, `wharf bench e2e: -handler "x": want insert, batch or noop`, "wharf bench e2e"},
		{[]string{"bench", "worker"}, "wharf bench worker: -database-url and -database are required", "wharf bench worker"},
		{[]string{"bench", "e2e", "-sample", "0s"}, "wharf bench e2e: -sample 0s: want a positive duration", "wharf bench e2e"},
	} {
		code, stdout, stderr := wharfRun(context.Background(), tc.args...)
		require.Equal(t, exitUsage, code, "%q: %s", tc.args, stderr)
		require.Contains(t, stderr, tc.want, "%q", tc.args)
		require.Contains(t, stderr, "Run '"+tc.path+" -h' for usage.", "%q", tc.args)
		require.Empty(t, stdout, "%q", tc.args)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string // in stdout
	}{
		{[]string{"help"}, []string{"Usage:\n  wharf <command>", "bench "}},
		{[]string{"-h"}, []string{"Usage:\n  wharf <command>", "bench "}},
		{[]string{"bench", "--help"}, []string{"Usage:\n  wharf bench <command>", "ingest ", "drain ", "e2e "}},
		{[]string{"help", "bench"}, []string{"Usage:\n  wharf bench <command>"}},
		{[]string{"bench", "ingest", "-h"}, []string{"Usage:\n  wharf bench ingest [flags]", "Examples:\n  wharf bench ingest", "-database-url", "-c int"}},
		{[]string{"bench", "drain", "-help"}, []string{"Usage:\n  wharf bench drain [flags]", "Examples:\n  wharf bench drain", "-procs int", "-handler string"}},
		{[]string{"help", "bench", "e2e"}, []string{"Usage:\n  wharf bench e2e [flags]", "Examples:\n  wharf bench e2e", "-sample duration"}},
	} {
		code, stdout, stderr := wharfRun(context.Background(), tc.args...)
		require.Equal(t, exitOK, code, "%q: %s", tc.args, stderr)
		for _, w := range tc.want {
			require.Contains(t, stdout, w, "%q", tc.args)
		}
		require.NotContains(t, stdout, "\n  worker ", "%q: the worker command is internal", tc.args)
	}
}

// TestNoServer: a server that does not answer is a failure (exit 1) that
// says what to do, not a usage error.
func TestNoServer(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := wharfRun(context.Background(), "bench", "drain", "-n", "10", "-database-url", "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=5")
	require.Equal(t, exitFailure, code, stderr)
	require.Contains(t, stderr, "wharf: connect to the server: ")
	require.Contains(t, stderr, "is PostgreSQL running? set --database-url or $DATABASE_URL")
	require.Empty(t, stdout)
}

// TestSilentServer: a server that accepts the connection and never
// answers is given up on after the connect timeout (shortened here) when
// the URL sets none, by every command that connects.
func TestSilentServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	url := "postgres://postgres@" + ln.Addr().String() + "/postgres"
	for _, args := range [][]string{
		{"migrate", "status"}, {"queue", "stats"}, {"dlq", "ls"}, {"pause", "--source", "s"}, {"log", "stream", "s"}, {"bench", "drain", "-n", "10"},
	} {
		// A hang ends with the context, as Ctrl-C would: exit 130.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var stdout, stderr testio.Buffer
		code := run(ctx, args, &env{stdout: &stdout, stderr: &stderr, stdin: strings.NewReader(""),
			getenv: func(string) string { return url }, connectTimeout: 200 * time.Millisecond})
		cancel()
		require.Equal(t, exitFailure, code, "%q: %s", args, stderr.String())
		require.Contains(t, stderr.String(), "timeout", "%q", args)
		require.Contains(t, stderr.String(), "is PostgreSQL running", "%q", args)
	}
}
