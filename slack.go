package wharf

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const (
	slackName      = "slack"
	slackTimestamp = "X-Slack-Request-Timestamp"
	slackSignature = "X-Slack-Signature"
)

// SlackVerifier verifies requests from Slack (Events API, interactivity,
// slash commands):
//
//	X-Slack-Request-Timestamp: 1531420618
//	X-Slack-Signature: v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503
//
// the hex HMAC-SHA256 of "v0:<timestamp>:<body>" keyed with the app's
// signing secret, with the timestamp within Tolerance of now.
//
// Its default identity (see Identify) depends on what Slack sent:
//
//   - Events API (a JSON body): the id is "event_id". The type is the
//     inner event's type ("message", "app_mention") for "event_callback"
//     bodies, else the top-level "type". Slack's retries (X-Slack-Retry-Num)
//     keep the event_id, so they are duplicates. An "app_rate_limited"
//     notice has no event_id: its id is
//     "app_rate_limited:<api_app_id>:<team_id>:<minute_rate_limited>"; a
//     url_verification body (which Handshake answers) has its challenge.
//   - Interactions (a form body, payload=<json>): the type is
//     "interaction." and the payload's "type" ("interaction.block_actions",
//     "interaction.view_submission"). They carry no event id: the id is
//     the payload's "trigger_id", unique per user action; without one,
//     "<user.id>:<ts>" with the first of "action_ts", "actions.0.action_ts",
//     "message_ts" and "container.message_ts"; for "view_closed",
//     "view_closed:<view.id>". Payloads with none of these are refused
//     (ErrInvalidIdentity). FromJSON overrides read the payload's JSON.
//     Interactions that need their answer in the HTTP response (such as
//     block_suggestion) cannot be served through a queue.
//   - Slash commands (a form body with "command"): the id is "trigger_id"
//     and the type "command." and the command without its slash
//     ("/deploy" gives "command.deploy").
//
// There is no ordering key. SlackVerifier implements Handshaker for the
// url_verification challenge and the ssl_check of slash commands.
//
// A SlackVerifier is safe for concurrent use; do not change its fields
// while it is in use.
type SlackVerifier struct {
	// Secrets are the app's signing secrets (not the deprecated
	// verification token). A request signed with any of them is accepted
	// (keep the old one here during a rotation).
	Secrets []string

	// Lookup, when set, replaces Secrets: it returns the secrets for each
	// request (see SecretLookup), for one endpoint serving several apps.
	Lookup SecretLookup

	// Tolerance is how far X-Slack-Request-Timestamp may be from this
	// process's clock, in the past or in the future. Defaults to 5 minutes
	// (DefaultTolerance), Slack's recommendation.
	Tolerance time.Duration

	now func() time.Time // for tests; defaults to time.Now
}

// Slack returns a verifier for requests from Slack with the app's signing
// secrets; give several during a rotation.
func Slack(secrets ...string) *SlackVerifier {
	return &SlackVerifier{Secrets: append([]string(nil), secrets...)}
}

// Verify checks X-Slack-Signature against the body and
// X-Slack-Request-Timestamp, which must be within Tolerance of now.
// Several signatures (repeated headers, or a comma-separated list) are
// accepted if one matches. Errors wrap ErrInvalidSignature, except those of
// the secret lookup and of a misconfigured verifier (ErrInvalidSource); see
// Verifier.
func (v *SlackVerifier) Verify(ctx context.Context, header http.Header, body []byte) error {
	const p = slackName
	if err := v.validate(); err != nil {
		return err
	}
	ts := header.Get(slackTimestamp)
	if err := checkUnixTimestamp(p, slackTimestamp, ts, clockNow(v.now), toleranceOrDefault(v.Tolerance)); err != nil {
		return err
	}
	sigs, err := parseSignatures(p, slackSignature, header.Values(slackSignature), splitOn(","), "v0=", hexSignature, sha256.Size)
	if err != nil {
		return err
	}
	secrets, err := resolveSecrets(ctx, p, v.Secrets, v.Lookup, header, body)
	if err != nil {
		return err
	}
	prefix := []byte("v0:" + ts + ":")
	if anySecretMatches(sha256.New, secrets, sigs, prefix, body) {
		return nil
	}
	return invalidSignature(p, "no v0 signature matches (%d given, %d secrets tried)", len(sigs), len(secrets))
}

func (v *SlackVerifier) validate() error {
	if err := validateSecrets(slackName, v.Secrets, v.Lookup); err != nil {
		return err
	}
	return validateTolerance(slackName, v.Tolerance)
}

var (
	slackTypePath      = mustJSONPath("type")
	slackChallengePath = mustJSONPath("challenge")
)

// Handshake answers what Slack sends to check an endpoint, once Verify has
// accepted the request (call Verify first: an unverified challenge must not
// be echoed):
//
//   - a url_verification body ({"type":"url_verification","challenge":...})
//     gets 200 with the challenge as text/plain;
//   - a slash command's ssl_check=1 gets 200 with an empty body.
//
// Everything else is not a handshake (handled false).
func (v *SlackVerifier) Handshake(header http.Header, body []byte) (status int, contentType string, response []byte, handled bool) {
	switch slackBodyKind(header, body) {
	case slackJSON:
		if !bytes.Contains(body, []byte("url_verification")) {
			return 0, "", nil, false
		}
		vals, err := scanJSON(body, []jsonPath{slackTypePath, slackChallengePath})
		if err != nil {
			return 0, "", nil, false
		}
		typ, _ := vals[0].text()
		challenge, reason := vals[1].text()
		if typ != "url_verification" || challenge == "" || reason != "" {
			return 0, "", nil, false
		}
		return http.StatusOK, "text/plain; charset=utf-8", []byte(challenge), true
	case slackForm:
		if !bytes.Contains(body, []byte("ssl_check")) {
			return 0, "", nil, false
		}
		form, err := url.ParseQuery(string(body))
		if err == nil && form.Get("ssl_check") == "1" {
			return http.StatusOK, "text/plain; charset=utf-8", nil, true
		}
	}
	return 0, "", nil, false
}

type slackKind uint8

const (
	slackJSON slackKind = iota + 1
	slackForm
)

// slackBodyKind tells a JSON body from a form body by Content-Type, or by
// the first byte when the header is missing.
func slackBodyKind(header http.Header, body []byte) slackKind {
	ct := strings.ToLower(header.Get("Content-Type"))
	switch {
	case strings.HasPrefix(ct, "application/json"):
		return slackJSON
	case strings.HasPrefix(ct, "application/x-www-form-urlencoded"):
		return slackForm
	}
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return slackJSON
	}
	return slackForm
}

// slackRequest is what the Slack verifier's prepareIdentity learned about a
// request.
type slackRequest struct {
	kind    slackRequestKind
	form    url.Values
	formErr error
}

type slackRequestKind uint8

const (
	slackEvents slackRequestKind = iota + 1
	slackInteraction
	slackCommand
	slackUnknownForm
)

// The JSON paths the Slack defaults read: Events API bodies and
// interaction payloads are never the same document, so one list serves
// both.
var slackPaths = []jsonPath{
	mustJSONPath("type"),
	mustJSONPath("event_id"),
	mustJSONPath("event.type"),
	mustJSONPath("challenge"),
	mustJSONPath("api_app_id"),
	mustJSONPath("team_id"),
	mustJSONPath("minute_rate_limited"),
	mustJSONPath("trigger_id"),
	mustJSONPath("action_ts"),
	mustJSONPath("actions.0.action_ts"),
	mustJSONPath("message_ts"),
	mustJSONPath("container.message_ts"),
	mustJSONPath("user.id"),
	mustJSONPath("view.id"),
}

// Identify returns the default identity of a verified request (see
// SlackVerifier for each kind of request). Errors wrap ErrInvalidIdentity.
func (v *SlackVerifier) Identify(header http.Header, body []byte) (Identity, error) {
	return identifyDefaults(v, header, body)
}

func (v *SlackVerifier) prepareIdentity(r *identityRequest) {
	for _, p := range slackPaths {
		r.addPath(p)
	}
	s := &r.slack
	if slackBodyKind(r.header, r.body) == slackJSON {
		s.kind = slackEvents
		return
	}
	s.form, s.formErr = url.ParseQuery(string(r.body))
	switch {
	case s.formErr != nil:
		s.kind = slackUnknownForm
		r.docErr = "the form body is malformed: " + s.formErr.Error()
	case s.form.Has("payload"):
		s.kind = slackInteraction
		r.doc = []byte(s.form.Get("payload"))
	case s.form.Has("command"):
		s.kind = slackCommand
		r.docErr = "a slash command's body is a form, not JSON"
	default:
		s.kind = slackUnknownForm
		r.docErr = "the form body has neither payload nor command"
	}
}

func (v *SlackVerifier) defaultIdentity(r *identityRequest) (id, typ, key fieldValue) {
	switch r.slack.kind {
	case slackEvents:
		return slackEventIdentity(r)
	case slackInteraction:
		return slackInteractionIdentity(r)
	case slackCommand:
		f := r.slack.form
		id = fieldValue{value: f.Get("trigger_id"), from: `form "trigger_id"`}
		typ = fieldValue{from: `form "command"`}
		if cmd := strings.TrimPrefix(f.Get("command"), "/"); cmd != "" {
			typ.value = "command." + cmd
		}
		return id, typ, key
	}
	reason := r.docErr
	return fieldValue{from: "slack form", reason: reason}, fieldValue{from: "slack form", reason: reason}, key
}

func slackEventIdentity(r *identityRequest) (id, typ, key fieldValue) {
	typ = r.json("type", `JSON "type"`)
	id = r.json("event_id", `JSON "event_id"`)
	switch typ.value {
	case "event_callback":
		typ = r.json("event.type", `JSON "event.type"`)
	case "url_verification":
		if id.value == "" && id.reason == "" {
			id = r.json("challenge", `JSON "challenge"`)
		}
	case "app_rate_limited":
		if id.value == "" && id.reason == "" {
			app, team, minute := r.json("api_app_id", ""), r.json("team_id", ""), r.json("minute_rate_limited", "")
			id.from = `JSON "api_app_id", "team_id" and "minute_rate_limited"`
			if app.reason == "" && team.reason == "" && minute.reason == "" && minute.value != "" {
				id.value = "app_rate_limited:" + app.value + ":" + team.value + ":" + minute.value
			}
		}
	}
	return id, typ, key
}

func slackInteractionIdentity(r *identityRequest) (id, typ, key fieldValue) {
	t := r.json("type", `payload JSON "type"`)
	typ = t
	if t.value != "" {
		typ.value = "interaction." + t.value
	}
	if id = r.json("trigger_id", `payload JSON "trigger_id"`); id.value != "" || id.reason != "" {
		return id, typ, key
	}
	user := r.json("user.id", "")
	for _, p := range [...]string{"action_ts", "actions.0.action_ts", "message_ts", "container.message_ts"} {
		ts := r.json(p, "")
		if ts.value != "" && ts.reason == "" && user.reason == "" {
			id = fieldValue{value: user.value + ":" + ts.value, from: `payload JSON "user.id" and "` + p + `"`}
			return id, typ, key
		}
	}
	if t.value == "view_closed" {
		if view := r.json("view.id", `payload JSON "view.id"`); view.value != "" || view.reason != "" {
			view.value = "view_closed:" + view.value
			return view, typ, key
		}
	}
	id = fieldValue{from: `payload JSON "trigger_id" (or "user.id" and "action_ts" or "message_ts")`}
	return id, typ, key
}
