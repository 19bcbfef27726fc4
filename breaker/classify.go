package breaker

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
)

// Outcome is what a call's result means to its breaker.
type Outcome int

const (
	// Success counts as a success.
	Success Outcome = iota + 1
	// Failure counts as a failure of the downstream: it moves a closed
	// breaker towards open and opens a half-open one. Execute returns it
	// wrapped in a *DownstreamError.
	Failure
	// Excluded is not counted at all: the error is the event's own fault
	// (a 4xx answer, a business error) or the caller's (a cancelled
	// context), and says nothing about the downstream's health. Execute
	// returns it as it is.
	Excluded
)

// String returns "success", "failure" or "excluded".
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Excluded:
		return "excluded"
	default:
		return fmt.Sprintf("Outcome(%d)", int(o))
	}
}

// Classifier decides what the error of a call means to the breaker. It is
// called once per call that returned an error (never with nil), may be
// called concurrently, and must not block. A Classifier that returns
// anything but Success, Failure or Excluded is treated as Failure.
type Classifier func(err error) Outcome

// DefaultClassifier is the Classifier unless Settings.Classify is set.
// In this order:
//
//   - an error marked with MarkBusiness is Excluded, one marked with
//     MarkFailure is a Failure (the outermost mark wins);
//   - context.Canceled is Excluded (the caller gave up; that says nothing
//     about the downstream), and so is an *OpenError from a breaker nested
//     inside the call, while a nested *DownstreamError is a Failure;
//   - a *StatusError is a Failure for 5xx and 429 Too Many Requests, and
//     Excluded for any other status (4xx is the request's fault);
//   - timeouts (context.DeadlineExceeded, os.ErrDeadlineExceeded,
//     ETIMEDOUT, any net.Error whose Timeout() is true) are Failures;
//   - connection errors are Failures: any net.Error (dial, DNS, reset;
//     of the bare syscall errnos only those listed here), a *url.Error
//     from an http.Client, ECONNREFUSED, ECONNRESET, ECONNABORTED, EPIPE,
//     EHOSTUNREACH, ENETUNREACH, and io.ErrUnexpectedEOF (the connection
//     closed mid-answer);
//   - but a *url.Error for a request the http.Client would not send or
//     whose redirects it would not follow (a URL that does not parse, has
//     no host or a scheme it does not speak; an invalid method or header;
//     more than 10 redirects, a Location that does not parse) is
//     Excluded, like a 4xx: it comes again for that request however well
//     the downstream is, so the event spends attempts instead of waiting
//     for ever;
//   - every other error is Excluded: treated as the event's fault, so an
//     event that fails that way spends its attempts and reaches the dead
//     letter queue instead of retrying for ever. Wrap the outage errors of
//     a client library that uses its own types with MarkFailure, or set a
//     Classifier.
//
// Errors are matched as errors.Is and errors.As would (through Unwrap,
// joined errors included, and Is methods for the context errors, ErrOpen
// and ErrDownstream), in one walk of the tree.
func DefaultClassifier(err error) Outcome {
	if err == nil {
		return Success
	}
	var f facts
	f.walk(err)
	switch {
	case f.mark != 0:
		return f.mark
	case f.open, f.canceled:
		return Excluded
	case f.downstream:
		return Failure
	case f.status != 0:
		if f.status >= 500 || f.status == http.StatusTooManyRequests {
			return Failure
		}
		return Excluded
	case f.timeout, f.connection:
		return Failure
	}
	return Excluded
}

// facts is what DefaultClassifier found in an error tree. It walks the
// tree once, in the order errors.Is and errors.As do (depth first, an
// error before what it wraps), instead of once per rule with errors.As:
// a failed call is classified in a fraction of the time.
type facts struct {
	mark       Outcome // of the first (outermost) mark
	status     int     // of the first *StatusError
	canceled   bool
	open       bool
	downstream bool
	timeout    bool
	connection bool
}

func (f *facts) walk(err error) {
	for err != nil {
		f.visit(err)
		switch x := err.(type) {
		case interface{ Unwrap() error }:
			err = x.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				f.walk(e)
			}
			return
		default:
			return
		}
	}
}

func (f *facts) visit(err error) {
	switch e := err.(type) {
	case *markedError:
		if f.mark == 0 {
			f.mark = e.outcome
		}
		return
	case *StatusError:
		if f.status == 0 {
			f.status = e.Code
		}
		return
	case *OpenError:
		f.open = true
		return
	case *DownstreamError:
		f.downstream = true
		return
	case *url.Error:
		if !requestFault(e) {
			f.connection = true
		}
		return
	case syscall.Errno:
		// syscall.Errno satisfies net.Error, but most errnos (ENOENT from
		// a file) say nothing about a connection.
		switch e {
		case syscall.ETIMEDOUT:
			f.timeout = true
		case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
			syscall.EPIPE, syscall.EHOSTUNREACH, syscall.ENETUNREACH:
			f.connection = true
		}
		return
	}
	switch err {
	case context.Canceled:
		f.canceled = true
		return
	case context.DeadlineExceeded, os.ErrDeadlineExceeded:
		f.timeout = true
		return
	case io.ErrUnexpectedEOF:
		f.connection = true
		return
	case ErrOpen:
		f.open = true
		return
	case ErrDownstream:
		f.downstream = true
		return
	}
	if ne, ok := err.(net.Error); ok {
		if ne.Timeout() {
			f.timeout = true
		} else {
			f.connection = true
		}
		return
	}
	// An error of the caller's own type may say it is one of these.
	if x, ok := err.(interface{ Is(error) bool }); ok {
		switch {
		case x.Is(context.Canceled):
			f.canceled = true
		case x.Is(context.DeadlineExceeded):
			f.timeout = true
		case x.Is(ErrOpen):
			f.open = true
		case x.Is(ErrDownstream):
			f.downstream = true
		}
	}
}

// requestFaults begin the errors that net/http's Client returns, inside a
// *url.Error, for a request it refuses to send or redirects it refuses to
// follow. net/http gives them no types; TestDefaultClassifierOverRealHTTP
// makes each happen, so a change of wording in a Go release fails it.
var requestFaults = []string{
	"unsupported protocol scheme",
	"http: no Host in request URL",
	"http: nil Request.",
	"net/http: invalid ",
	"stopped after ",
	"failed to parse Location header",
}

// requestFault reports whether e is an http.Client's refusal of the request
// itself, or url.Parse's (http.NewRequest returns its *url.Error).
func requestFault(e *url.Error) bool {
	if e.Op == "parse" {
		return true
	}
	if e.Err == nil {
		return false
	}
	msg := e.Err.Error()
	for _, prefix := range requestFaults {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

// MarkBusiness marks err as the event's own fault (a business rule
// refused it, the downstream rejected the request as invalid): the breaker
// does not count it whatever its type, and Execute returns it unwrapped
// from any *DownstreamError, so the caller spends an attempt on the event.
// The returned error reads as err and unwraps to it. MarkBusiness(nil) is
// nil.
func MarkBusiness(err error) error {
	if err == nil {
		return nil
	}
	return &markedError{err: err, outcome: Excluded}
}

// MarkFailure marks err as a failure of the downstream whatever its type
// (for a client library's own outage errors, or a 4xx answer that in fact
// means the downstream is unwell): the breaker counts it and Execute
// returns it in a *DownstreamError. The returned error reads as err and
// unwraps to it. MarkFailure(nil) is nil.
func MarkFailure(err error) error {
	if err == nil {
		return nil
	}
	return &markedError{err: err, outcome: Failure}
}

// markedError carries an explicit outcome for DefaultClassifier.
type markedError struct {
	err     error
	outcome Outcome
}

func (e *markedError) Error() string { return e.err.Error() }
func (e *markedError) Unwrap() error { return e.err }

// StatusError is an HTTP answer that is not a success, for calls made
// without Transport: return &StatusError{Code: resp.StatusCode} from the
// function given to Execute and DefaultClassifier counts 5xx and 429 as
// failures and excludes the rest.
type StatusError struct {
	// Code is the HTTP status code.
	Code int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("breaker: downstream answered %d %s", e.Code, http.StatusText(e.Code))
}
