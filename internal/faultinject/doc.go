// Package faultinject holds wharf's fault-injection suite: tests that run
// wharf in real processes (the program in ./node), against real PostgreSQL,
// over real HTTP, inject faults (SIGKILL of workers, a crash of the
// database server, a downstream outage, duplicate storms, poison events,
// slow and hanging handlers, an event that kills its worker, a worker
// stalled mid-transaction past its lease, workers killed while a paused
// backlog makes them fetch by kind) and check the invariants of DESIGN.md on
// what comes out: every acknowledged event has exactly one effect, none is
// lost, the dead letter queue holds exactly what should be there.
//
// The package has no code of its own beyond this comment; everything is in
// its tests. They run in short mode by default (a few thousand events,
// seconds-long outages, within about two minutes for the whole package with
// -race); full sizes run with -long or WHARF_FAULT_LONG=1:
//
//	go test -race -count=1 ./internal/faultinject/
//	WHARF_FAULT_LONG=1 go test -count=1 -timeout 30m -v ./internal/faultinject/
//
// Each scenario logs one markdown row of what it measured, and appends it
// to the file named by WHARF_FAULT_REPORT when set; RELIABILITY.md at the
// repository root holds the table.
package faultinject
