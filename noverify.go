package wharf

import (
	"context"
	"net/http"
	"strings"
)

const noVerifyName = "no verification"

// NoVerifier accepts every request without checking anything. It exists
// for local testing and for sources authenticated another way before the
// request reaches wharf (mutual TLS, a private network, an authenticating
// proxy), and has to be chosen by name, with a reason, so that it stands
// out in review. Never use it for a source reachable from the internet.
//
// It has no default identity: a source using it must set SourceFields.ID
// and SourceFields.Type.
type NoVerifier struct {
	// Reason says why requests of this source need no signature ("local
	// development", "mTLS at the ingress"), for logs and code review.
	// Required: with an empty reason Verify fails with ErrInvalidSource.
	Reason string
}

// NoVerification returns a verifier that accepts every request, for the
// given reason, which must not be empty. See NoVerifier.
func NoVerification(reason string) *NoVerifier {
	return &NoVerifier{Reason: reason}
}

// Verify accepts every request, or fails with ErrInvalidSource when Reason
// is empty.
func (v *NoVerifier) Verify(context.Context, http.Header, []byte) error {
	return v.validate()
}

func (v *NoVerifier) validate() error {
	if strings.TrimSpace(v.Reason) == "" {
		return invalidSource(noVerifyName, "NoVerification needs a reason")
	}
	return nil
}

// Identify fails with ErrInvalidIdentity: a source without verification
// must set SourceFields.ID and SourceFields.Type.
func (v *NoVerifier) Identify(header http.Header, body []byte) (Identity, error) {
	return identifyDefaults(v, header, body)
}

func (v *NoVerifier) prepareIdentity(*identityRequest) {}

func (v *NoVerifier) defaultIdentity(*identityRequest) (id, typ, key fieldValue) {
	return noDefaultIdentity()
}
