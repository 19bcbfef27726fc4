//go:build !linux

package main

import "time"

// selfCPU is unknown off Linux: nothing measured, left out of -json.
func selfCPU() time.Duration { return 0 }

// postgresProcs is unknown off Linux: none.
func postgresProcs() map[int]procCPU { return nil }
