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

// selfCPU returns the CPU time (user and system) used so far by this
// process.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// postgresProcs returns every process named postgres on the machine, by
// pid, with its start time and the CPU time (user and system) it used so
// far; none when the server runs elsewhere.
func postgresProcs() map[int]procCPU {
	procs := map[int]procCPU{}
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
		pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
		fields := strings.Fields(string(b[end+2:]))
		if err != nil || len(fields) < 20 {
			continue
		}
		user, _ := strconv.ParseInt(fields[11], 10, 64)
		system, _ := strconv.ParseInt(fields[12], 10, 64)
		start, _ := strconv.ParseUint(fields[19], 10, 64)
		procs[pid] = procCPU{start: start, cpu: time.Duration(user+system) * time.Second / userHZ}
	}
	return procs
}
