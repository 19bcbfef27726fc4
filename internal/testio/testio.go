// Package testio holds what tests share for reading output that is still
// being written: a logger's, a command's, a child process's.
package testio

import (
	"bytes"
	"sync"
)

// Buffer is a bytes.Buffer safe for concurrent use: one goroutine (or a
// child process's pipe) writes while the test reads.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
