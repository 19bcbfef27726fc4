package wharf

import (
	"context"
	"crypto/sha256"
	"hash"
	"net/http"
	"strings"
	"time"
	"unicode"
)

const hmacName = "hmac"

// SignatureEncoding is how an HMACVerifier's signature is written in its
// header.
type SignatureEncoding uint8

const (
	// HexEncoding is lower- or upper-case hexadecimal, the default.
	HexEncoding SignatureEncoding = iota
	// Base64Encoding is standard base64, with or without padding.
	Base64Encoding
)

// HMACVerifier verifies a provider's HMAC signature scheme when this package
// has no verifier of its own for it: a header holds the HMAC of the body
// (and, optionally, of a timestamp) under a shared secret. For example, a
// scheme that sends "X-Signature: sha512=<hex of HMAC-SHA512(ts + "." + body)>"
// and "X-Timestamp: <unix seconds>":
//
//	v := wharf.HMAC("X-Signature", os.Getenv("SECRET"))
//	v.Hash = sha512.New
//	v.Prefix = "sha512="
//	v.TimestampHeader = "X-Timestamp" // the default SignedContent is then "<ts>.<body>"
//
// It has no default identity: a source using it must set SourceFields.ID
// and SourceFields.Type (its Identify fails with ErrInvalidIdentity).
//
// An HMACVerifier is safe for concurrent use; do not change its fields
// while it is in use.
type HMACVerifier struct {
	// Header names the header that carries the signature. Required. Each
	// value of a repeated header is a candidate signature.
	Header string

	// Separator, when set, splits a header value into several candidate
	// signatures (" " or ","). Defaults to none.
	Separator string

	// Prefix is text before each encoded signature, such as "sha256=" or
	// "v1,"; a signature without it is refused. Each candidate is split on
	// Separator and trimmed before the prefix is looked for, so a Prefix
	// that holds the Separator or starts with a space is refused
	// (ErrInvalidSource). Defaults to none.
	Prefix string

	// Hash is the HMAC's hash function: sha256.New, sha512.New, or (for
	// legacy schemes only) sha1.New. Defaults to sha256.New.
	Hash func() hash.Hash

	// Encoding of the signature: HexEncoding (the default) or
	// Base64Encoding.
	Encoding SignatureEncoding

	// TimestampHeader, when set, names a header carrying the time of
	// signing; requests whose time is further than Tolerance from now
	// are refused, and SignedContent receives its text. Defaults to none:
	// the scheme signs no time and there is no replay window.
	TimestampHeader string

	// ParseTimestamp turns the TimestampHeader's text into a time.
	// Defaults to Unix seconds (ASCII digits only).
	ParseTimestamp func(string) (time.Time, error)

	// SignedContent returns the bytes the sender signed, from the
	// TimestampHeader's text (empty without one), the request's headers
	// and the raw body. Defaults to the body alone without a
	// TimestampHeader, and "<timestamp>.<body>" with one.
	SignedContent func(timestamp string, header http.Header, body []byte) []byte

	// Secrets are the shared secrets, used as literal bytes. A request
	// signed with any of them is accepted (keep the old one here during a
	// rotation).
	Secrets []string

	// Lookup, when set, replaces Secrets: it returns the secrets for each
	// request (see SecretLookup).
	Lookup SecretLookup

	// Tolerance is how far the timestamp may be from this process's clock,
	// in the past or in the future, when TimestampHeader is set. Defaults
	// to 5 minutes (DefaultTolerance).
	Tolerance time.Duration

	now func() time.Time // for tests; defaults to time.Now
}

// HMAC returns a generic HMAC verifier reading the signature from header,
// with the given secrets and the defaults of HMACVerifier: HMAC-SHA256 of
// the body, hex, no prefix, no timestamp. Set its other fields before use.
func HMAC(header string, secrets ...string) *HMACVerifier {
	return &HMACVerifier{Header: header, Secrets: append([]string(nil), secrets...)}
}

// Verify checks the signature header against the body (and the timestamp,
// when TimestampHeader is set). Errors wrap ErrInvalidSignature, except
// those of the secret lookup and of a misconfigured verifier
// (ErrInvalidSource); see Verifier.
func (v *HMACVerifier) Verify(ctx context.Context, header http.Header, body []byte) error {
	const p = hmacName
	if err := v.validate(); err != nil {
		return err
	}
	newHash := v.hash()
	var ts string
	if v.TimestampHeader != "" {
		ts = header.Get(v.TimestampHeader)
		if err := v.checkTimestamp(ts); err != nil {
			return err
		}
	}
	sigs, err := parseSignatures(p, v.Header, header.Values(v.Header), splitOn(v.Separator), v.Prefix, v.decoder(), newHash().Size())
	if err != nil {
		return err
	}
	secrets, err := resolveSecrets(ctx, p, v.Secrets, v.Lookup, header, body)
	if err != nil {
		return err
	}
	content := v.Content(ts, header, body)
	if anySecretMatches(newHash, secrets, sigs, content) {
		return nil
	}
	return invalidSignature(p, "no signature in %s matches (%d given, %d secrets tried)", v.Header, len(sigs), len(secrets))
}

func (v *HMACVerifier) checkTimestamp(ts string) error {
	if v.ParseTimestamp == nil {
		return checkUnixTimestamp(hmacName, v.TimestampHeader, ts, clockNow(v.now), toleranceOrDefault(v.Tolerance))
	}
	if ts == "" {
		return invalidSignature(hmacName, "header %s is missing", v.TimestampHeader)
	}
	t, err := v.ParseTimestamp(ts)
	if err != nil {
		return invalidSignature(hmacName, "header %s is malformed: %s", v.TimestampHeader, truncateForLog(err.Error()))
	}
	return checkAge(hmacName, t, clockNow(v.now), toleranceOrDefault(v.Tolerance))
}

func (v *HMACVerifier) hash() func() hash.Hash {
	if v.Hash == nil {
		return sha256.New
	}
	return v.Hash
}

func (v *HMACVerifier) decoder() signatureEncoding {
	if v.Encoding == Base64Encoding {
		return base64Signature
	}
	return hexSignature
}

// Content returns the bytes a signature covers for v, as Verify computes
// them: SignedContent's, or by default "<ts>.<body>" with a
// TimestampHeader and the body alone without. Signers that build whole
// requests (wharftest) call it with the headers they send.
func (v *HMACVerifier) Content(ts string, header http.Header, body []byte) []byte {
	switch {
	case v.SignedContent != nil:
		return v.SignedContent(ts, header, body)
	case v.TimestampHeader == "":
		return body
	}
	out := make([]byte, 0, len(ts)+1+len(body))
	out = append(out, ts...)
	out = append(out, '.')
	return append(out, body...)
}

// validateShape checks what Verify needs besides secrets.
func (v *HMACVerifier) validateShape() error {
	switch {
	case strings.TrimSpace(v.Header) == "":
		return invalidSource(hmacName, "Header is empty")
	case v.Encoding != HexEncoding && v.Encoding != Base64Encoding:
		return invalidSource(hmacName, "Encoding %d is neither HexEncoding nor Base64Encoding", v.Encoding)
	case v.Tolerance < 0:
		return invalidSource(hmacName, "Tolerance %s is negative", v.Tolerance)
	case v.TimestampHeader == "" && v.ParseTimestamp != nil:
		return invalidSource(hmacName, "ParseTimestamp is set without a TimestampHeader")
	case v.Separator != "" && strings.Contains(v.Prefix, v.Separator):
		// Verify splits on the separator before it looks for the prefix:
		// no signature could ever match.
		return invalidSource(hmacName, "Prefix %q holds the Separator %q", v.Prefix, v.Separator)
	case strings.TrimLeftFunc(v.Prefix, unicode.IsSpace) != v.Prefix:
		// Verify trims each signature before it looks for the prefix.
		return invalidSource(hmacName, "Prefix %q starts with a space", v.Prefix)
	}
	return nil
}

func (v *HMACVerifier) validate() error {
	if err := v.validateShape(); err != nil {
		return err
	}
	return validateSecrets(hmacName, v.Secrets, v.Lookup)
}

// Identify fails with ErrInvalidIdentity: the generic verifier knows no
// provider's identity, so a source using it must set SourceFields.ID and
// SourceFields.Type.
func (v *HMACVerifier) Identify(header http.Header, body []byte) (Identity, error) {
	return identifyDefaults(v, header, body)
}

func (v *HMACVerifier) prepareIdentity(*identityRequest) {}

func (v *HMACVerifier) defaultIdentity(*identityRequest) (id, typ, key fieldValue) {
	return noDefaultIdentity()
}

func noDefaultIdentity() (id, typ, key fieldValue) {
	id = fieldValue{reason: noDefaultReason + "; set SourceFields.ID"}
	typ = fieldValue{reason: noDefaultReason + "; set SourceFields.Type"}
	return id, typ, key
}

// noDefaultReason starts the reason of a verifier without a default
// identity, which needsFields recognises.
const noDefaultReason = "the source's verifier has no default"
