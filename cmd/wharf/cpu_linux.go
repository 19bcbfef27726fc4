//go:build linux

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat: 100 a second
// on every architecture Go runs Linux on.
const userHZ = 100

// processCPU returns the CPU time (user and system) used so far by this
// process and by every process named postgres on the machine. The
// Postgres figure covers the whole server, its other databases included;
// postgresSeen is false when no such process is visible (a server on
// another machine). Processes that end between two readings take their
// time with them, so a difference can come out low, never high.
func processCPU() (self, postgres time.Duration, postgresSeen bool) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // ended meanwhile
		}
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open || string(b[open+1:end]) != "postgres" || end+2 > len(b) {
			continue
		}
		fields := strings.Fields(string(b[end+2:]))
		if len(fields) < 13 {
			continue
		}
		user, _ := strconv.ParseInt(fields[11], 10, 64)
		system, _ := strconv.ParseInt(fields[12], 10, 64)
		postgres += time.Duration(user+system) * time.Second / userHZ
		postgresSeen = true
	}
	return self, postgres, postgresSeen
}
