package dlq

import "errors"

var (
	// ErrInvalidConfig is wrapped by every error about a Config that cannot
	// work.
	ErrInvalidConfig = errors.New("dlq: invalid config")

	// ErrInvalidFilter is wrapped by every error about a Filter or Page that
	// cannot be used (a bad status, a limit out of range, a reversed time
	// range).
	ErrInvalidFilter = errors.New("dlq: invalid filter")

	// ErrNotFound is returned by Get for an id that names no entry.
	ErrNotFound = errors.New("dlq: entry not found")
)
