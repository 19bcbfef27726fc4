package wharf

import "time"

// SetClock replaces a timestamped verifier's clock, for tests.
func SetClock(v Verifier, now func() time.Time) {
	switch v := v.(type) {
	case *StandardWebhooksVerifier:
		v.now = now
	case *StripeVerifier:
		v.now = now
	case *SlackVerifier:
		v.now = now
	case *HMACVerifier:
		v.now = now
	default:
		panic("SetClock: verifier has no clock")
	}
}

// Validate exposes the registration-time check Pipeline.Source runs.
func Validate(v Verifier) error { return v.(sourceValidator).validate() }
