// Package jsontext holds what wharf's hand-written JSON scanners share:
// the root package's identity extraction and the queue's header decoding.
package jsontext

// SkipSpace returns the offset of the first byte of data at or after pos
// that is not JSON whitespace (space, tab, newline, carriage return), or
// len(data).
func SkipSpace(data []byte, pos int) int {
	for pos < len(data) {
		switch data[pos] {
		case ' ', '\t', '\n', '\r':
			pos++
		default:
			return pos
		}
	}
	return pos
}
