//go:build unix

package main

import (
	"runtime"
	"syscall"
)

// peakRSS returns the peak resident set size of this process and of its
// largest waited-for child, in KiB (getrusage's ru_maxrss).
func peakRSS() (self, children int64) {
	var own, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &own)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	return toKiB(int64(own.Maxrss)), toKiB(int64(kids.Maxrss))
}

// toKiB converts ru_maxrss, in bytes on macOS and KiB elsewhere.
func toKiB(maxrss int64) int64 {
	if runtime.GOOS == "darwin" {
		return maxrss / 1024
	}
	return maxrss
}
