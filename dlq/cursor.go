package dlq

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// String formats c as "<dead_at in Unix microseconds>-<id>", exact at the
// database's precision, for a cursor that travels through a command line
// or a URL; ParseCursor reads it back.
func (c Cursor) String() string {
	return strconv.FormatInt(c.DeadAt.UnixMicro(), 10) + "-" + strconv.FormatInt(c.ID, 10)
}

// ParseCursor reads a cursor formatted by Cursor.String, or returns an
// error wrapping ErrInvalidFilter.
func ParseCursor(s string) (*Cursor, error) {
	at, id, ok := strings.Cut(s, "-")
	micros, err1 := strconv.ParseInt(at, 10, 64)
	n, err2 := strconv.ParseInt(id, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return nil, fmt.Errorf("%w: cursor %q is not <unix microseconds>-<id>", ErrInvalidFilter, s)
	}
	return &Cursor{DeadAt: time.UnixMicro(micros), ID: n}, nil
}
