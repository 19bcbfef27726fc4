// Command wharf is the operators' tool for wharf, the PostgreSQL-backed
// webhook pipeline.
//
// Install it with
//
//	go install github.com/wharfhq/wharf/cmd/wharf@latest
//
// It has the operators' commands (migrate, queue, pause, resume, dlq, log,
// send) and bench, which measures wharf against raw-SQL baselines on your
// own PostgreSQL server, in a scratch database it creates and drops:
//
//	wharf bench ingest -c 32 -d 10s     # signed webhooks over HTTP into Pipeline.Handler
//	wharf bench drain -n 100000         # workers empty a preloaded backlog
//	wharf bench e2e -c 16 -d 20s        # both at once: enqueue-to-handler latency, backlog
//
// Run wharf help, or wharf <command> -h, for the flags and more examples.
//
// Exit codes: 0 success; 1 the command failed (the server cannot be
// reached, a bench's consistency check failed, wharf send got an answer
// other than 2xx); 2 a bad command line; 130 interrupted (Ctrl-C or
// SIGTERM), after cleaning up. wharf log tail runs until Ctrl-C (or
// SIGTERM), and then exits 0.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin, getenv: os.Getenv})
	stop()
	os.Exit(code)
}
