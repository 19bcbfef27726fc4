package idempotency_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
)

func TestKeyIsUnambiguous(t *testing.T) {
	t.Parallel()
	require.Equal(t, "6:stripe:evt_1", idempotency.Key("stripe", "evt_1"))
	require.Equal(t, "", idempotency.Key("", "evt_1"), "an empty source must not make a key")
	require.Equal(t, "", idempotency.Key("stripe", ""), "an empty event id must not make a key")

	// Every pair of short strings over an alphabet rich in separators and
	// digits maps to its own key: a plain join would collide on
	// ("a:b", "c") and ("a", "b:c"), or ("1", "2:x") and ("12", "x").
	alphabet := []string{"a", ":", "1", "2"}
	var parts []string
	var grow func(prefix string)
	grow = func(prefix string) {
		if prefix != "" {
			parts = append(parts, prefix)
		}
		if len(prefix) == 3 {
			return
		}
		for _, c := range alphabet {
			grow(prefix + c)
		}
	}
	grow("")
	seen := make(map[string][2]string, len(parts)*len(parts))
	for _, source := range parts {
		for _, id := range parts {
			k := idempotency.Key(source, id)
			prev, dup := seen[k]
			require.False(t, dup, "Key(%q, %q) = Key(%q, %q) = %q", source, id, prev[0], prev[1], k)
			seen[k] = [2]string{source, id}
		}
	}
	require.Len(t, seen, len(parts)*len(parts))
}

// uuidV8 is the shape DownstreamKey promises: 36 characters, lower-case
// hex and hyphens, version 8, RFC variant.
var uuidV8 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestDownstreamKeyIsStableFixedAndDistinct(t *testing.T) {
	t.Parallel()
	// Pinned: a change of derivation would let a retry across an upgrade
	// repeat a payment. This value was also computed independently from
	// the documented algorithm.
	k := idempotency.DownstreamKey("billing.charge", idempotency.Key("stripe", "evt_1NG8"))
	require.Equal(t, "c4361497-0d7b-8602-89b1-11a951b932ea", k)
	require.Equal(t, k, idempotency.DownstreamKey("billing.charge", "6:stripe:evt_1NG8"), "deterministic")
	lock := idempotency.Lock{Consumer: "billing.charge", Key: "6:stripe:evt_1NG8", Token: 42, Attempt: 3}
	require.Equal(t, k, lock.DownstreamKey(), "the same for every holder and attempt")

	seen := map[string]string{}
	check := func(consumer, key string) {
		k := idempotency.DownstreamKey(consumer, key)
		require.Regexp(t, uuidV8, k)
		require.Len(t, k, 36)
		id := consumer + "\x00" + key
		prev, dup := seen[k]
		require.False(t, dup, "(%q) and (%q) share downstream key %s", id, prev, k)
		seen[k] = id
	}
	// Shifting bytes between consumer and key changes the key.
	check("a", "bc")
	check("ab", "c")
	check("abc", "")
	check("", "abc")
	for _, consumer := range []string{"billing", "emails", "billing.v2"} {
		for _, source := range []string{"stripe", "github"} {
			for _, id := range []string{"1", "2", "evt_1", strings.Repeat("x", idempotency.MaxKeyLen-20)} {
				check(consumer, idempotency.Key(source, id))
			}
		}
	}
	// Even a long or odd input gives a header-safe value.
	check(strings.Repeat("é", 100), "line\r\nbreak: and \"quotes\"")
}
