package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits on what a key row holds. Consumer and key together form the
// primary key, and a btree entry must stay well under PostgreSQL's limit of
// about 2.7 kB (a third of a page): these limits keep it under 1.3 kB.
const (
	// MaxConsumerLen is the longest consumer name, in bytes.
	MaxConsumerLen = 200
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 1024
	// MaxResultLen is the longest outcome Finish stores, in bytes (1 MiB).
	// Store a reference (a payment id) rather than a whole response.
	MaxResultLen = 1 << 20
)

// Key builds the key of a provider event from its source (the provider, or
// the endpoint it posts to: "stripe", "github-org-a") and the event id the
// provider gave it. Provider ids are only unique within a provider, so the
// source must be part of the key: two sources numbering their events
// "1", "2", … would otherwise collide, and the second event would be
// skipped silently as a duplicate of the first.
//
// The result is the source's length in bytes, a colon, the source, a colon,
// and the event id:
//
//	Key("stripe", "evt_1") == "6:stripe:evt_1"
//
// The length prefix makes it unambiguous whatever either part contains:
// ("a:b", "c") and ("a", "b:c") give different keys. Key returns "" when
// source or eventID is empty, which Claim, Once, Begin and Do refuse with
// ErrInvalidKey, so a missing event id can never become a key that all
// such events share.
//
// A key is yours to build however you like, as long as it identifies the
// event across every source the consumer sees; Key is the way wharf builds
// them. Changing how you build keys makes every stored key unknown: events
// redelivered across that change run again.
func Key(source, eventID string) string {
	if source == "" || eventID == "" {
		return ""
	}
	return strconv.Itoa(len(source)) + ":" + source + ":" + eventID
}

// DownstreamKey derives, from (consumer, key), an idempotency key to send to
// a downstream that accepts one (Stripe's and many other APIs'
// Idempotency-Key header), so that a side effect repeated after a crash or
// a lock takeover is recognised by the downstream as the same request.
//
// It is a UUID (RFC 9562, version 8, built from the first 122 bits of a
// SHA-256 of the two strings, length-prefixed and domain-separated): 36
// characters of lower-case hex and hyphens, fixed length, safe in any HTTP
// header, accepted where a downstream demands a UUID. It depends on nothing
// but its arguments, so every replica, release and retry derives the same
// key; wharf will not change the derivation (a change would let a retry
// across an upgrade repeat the side effect).
//
// Distinct (consumer, key) pairs give distinct keys (a collision needs about
// 2^61 pairs). Consumer names should be unique among everything that calls
// the same downstream account, or two consumers' requests for the same key
// would be taken for one.
func DownstreamKey(consumer, key string) string {
	h := sha256.New()
	var n [8]byte
	h.Write([]byte("wharf/idempotency/downstream-key/v1\x00"))
	binary.BigEndian.PutUint64(n[:], uint64(len(consumer)))
	h.Write(n[:])
	h.Write([]byte(consumer))
	binary.BigEndian.PutUint64(n[:], uint64(len(key)))
	h.Write(n[:])
	h.Write([]byte(key))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x80 // version 8
	u[8] = u[8]&0x3f | 0x80 // variant 10
	var b strings.Builder
	b.Grow(36)
	for i, part := range [][]byte{u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]} {
		if i > 0 {
			b.WriteByte('-')
		}
		b.WriteString(hex.EncodeToString(part))
	}
	return b.String()
}

// validKey reports why (consumer, key) cannot be stored, or nil.
func validKey(consumer, key string) error {
	if reason := validString("consumer", consumer, MaxConsumerLen); reason != "" {
		return &KeyError{Consumer: consumer, Key: key, Err: ErrInvalidKey, Reason: reason}
	}
	if reason := validString("key", key, MaxKeyLen); reason != "" {
		return &KeyError{Consumer: consumer, Key: key, Err: ErrInvalidKey, Reason: reason}
	}
	return nil
}

func validString(field, s string, maxLen int) string {
	switch {
	case s == "":
		return field + " is empty"
	case len(s) > maxLen:
		return field + " is " + strconv.Itoa(len(s)) + " bytes, over the limit of " + strconv.Itoa(maxLen)
	case strings.IndexByte(s, 0) >= 0:
		// PostgreSQL text cannot hold NUL.
		return field + " holds a NUL byte"
	case !utf8.ValidString(s):
		return field + " is not valid UTF-8"
	}
	return ""
}
