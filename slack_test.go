package wharf_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// Slack's documented example, "Verifying requests from Slack":
// https://api.slack.com/authentication/verifying-requests-from-slack
// (now docs.slack.dev/authentication/verifying-requests-from-slack).
const (
	slackVectorSecret    = "8f742231b10e8888abcd99yyyzzz85a5"
	slackVectorTimestamp = 1531420618
	slackVectorBody      = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
	slackVectorSignature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
)

func slackVectorHeader() http.Header {
	h := http.Header{}
	h.Set("X-Slack-Request-Timestamp", "1531420618")
	h.Set("X-Slack-Signature", slackVectorSignature)
	h.Set("Content-Type", "application/x-www-form-urlencoded")
	return h
}

func TestSlackPublishedVector(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	signedAt := time.Unix(slackVectorTimestamp, 0)
	body := []byte(slackVectorBody)
	v := wharf.Slack(slackVectorSecret)
	wharf.SetClock(v, at(signedAt))

	require.NoError(t, v.Verify(ctx, slackVectorHeader(), body))
	require.Equal(t, slackVectorSignature, wharf.SignSlack(slackVectorSecret, signedAt, body).Get("X-Slack-Signature"))

	rotated := wharf.Slack("0000000000000000000000000000beef", slackVectorSecret)
	wharf.SetClock(rotated, at(signedAt.Add(-wharf.DefaultTolerance)))
	require.NoError(t, rotated.Verify(ctx, slackVectorHeader(), body), "rotation, clock 5 minutes behind")

	// The 5-minute window.
	wharf.SetClock(v, at(signedAt.Add(5*time.Minute)))
	require.NoError(t, v.Verify(ctx, slackVectorHeader(), body))
	wharf.SetClock(v, at(signedAt.Add(5*time.Minute+time.Second)))
	require.ErrorIs(t, v.Verify(ctx, slackVectorHeader(), body), wharf.ErrInvalidSignature, "stale")
	wharf.SetClock(v, at(signedAt.Add(-5*time.Minute-time.Second)))
	require.ErrorIs(t, v.Verify(ctx, slackVectorHeader(), body), wharf.ErrInvalidSignature, "future")
	wharf.SetClock(v, at(signedAt))

	wrong := wharf.Slack("8f742231b10e8888abcd99yyyzzz85a6")
	wharf.SetClock(wrong, at(signedAt))
	require.ErrorIs(t, wrong.Verify(ctx, slackVectorHeader(), body), wharf.ErrInvalidSignature, "wrong secret")
	tampered := []byte(slackVectorBody)
	tampered[len(tampered)-1] = 'd'
	require.ErrorIs(t, v.Verify(ctx, slackVectorHeader(), tampered), wharf.ErrInvalidSignature, "tampered")
	h := slackVectorHeader()
	h.Set("X-Slack-Request-Timestamp", "1531420619")
	require.ErrorIs(t, v.Verify(ctx, h, body), wharf.ErrInvalidSignature, "timestamp is signed")

	// The documented request is a slash command.
	ident, err := v.Identify(slackVectorHeader(), body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c", Type: "command.webhook-collect"}, ident)
}

func jsonHeader() http.Header {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	return h
}

func formHeader() http.Header {
	h := http.Header{}
	h.Set("Content-Type", "application/x-www-form-urlencoded")
	return h
}

func interaction(payload string) []byte {
	return []byte(url.Values{"payload": {payload}}.Encode())
}

func TestSlackIdentity(t *testing.T) {
	t.Parallel()
	v := wharf.Slack("s")
	for _, c := range []struct {
		name   string
		header http.Header
		body   string
		want   wharf.Identity
		err    string
	}{
		{
			name:   "event_callback",
			header: jsonHeader(),
			body:   `{"token":"XXY","team_id":"T123ABC456","api_app_id":"A123ABC456","event":{"type":"app_mention","user":"U1","text":"hi","ts":"1515449522.000016"},"type":"event_callback","event_id":"Ev123ABC456","event_time":1515449522}`,
			want:   wharf.Identity{ID: "Ev123ABC456", Type: "app_mention"},
		},
		{
			name:   "event_callback without Content-Type",
			header: http.Header{},
			body:   ` {"type":"event_callback","event_id":"Ev1","event":{"type":"message"}}`,
			want:   wharf.Identity{ID: "Ev1", Type: "message"},
		},
		{
			name:   "event_callback without inner type",
			header: jsonHeader(),
			body:   `{"type":"event_callback","event_id":"Ev1","event":{}}`,
			err:    `wharf: invalid event identity: type from JSON "event.type": is missing`,
		},
		{
			name:   "event without event_id",
			header: jsonHeader(),
			body:   `{"type":"event_callback","event":{"type":"message"}}`,
			err:    `wharf: invalid event identity: id from JSON "event_id": is missing`,
		},
		{
			name:   "url_verification",
			header: jsonHeader(),
			body:   `{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}`,
			want:   wharf.Identity{ID: "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", Type: "url_verification"},
		},
		{
			name:   "app_rate_limited",
			header: jsonHeader(),
			body:   `{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","type":"app_rate_limited","team_id":"T123456","minute_rate_limited":1518467820,"api_app_id":"A123456"}`,
			want:   wharf.Identity{ID: "app_rate_limited:A123456:T123456:1518467820", Type: "app_rate_limited"},
		},
		{
			name:   "block_actions",
			header: formHeader(),
			body:   string(interaction(`{"type":"block_actions","user":{"id":"U1"},"trigger_id":"12466734323.1395872398","actions":[{"action_id":"a","action_ts":"1548426417.840180"}]}`)),
			want:   wharf.Identity{ID: "12466734323.1395872398", Type: "interaction.block_actions"},
		},
		{
			name:   "interaction without trigger_id",
			header: formHeader(),
			body:   string(interaction(`{"type":"block_actions","user":{"id":"U1"},"actions":[{"action_id":"a","action_ts":"1548426417.840180"}]}`)),
			want:   wharf.Identity{ID: "U1:1548426417.840180", Type: "interaction.block_actions"},
		},
		{
			name:   "message_action",
			header: formHeader(),
			body:   string(interaction(`{"type":"message_action","user":{"id":"U2"},"action_ts":"1548426418.000001","message_ts":"1548261231.000200"}`)),
			want:   wharf.Identity{ID: "U2:1548426418.000001", Type: "interaction.message_action"},
		},
		{
			name:   "view_closed",
			header: formHeader(),
			body:   string(interaction(`{"type":"view_closed","user":{"id":"U3"},"view":{"id":"V0PKB1ZFV"},"is_cleared":false}`)),
			want:   wharf.Identity{ID: "view_closed:V0PKB1ZFV", Type: "interaction.view_closed"},
		},
		{
			name:   "interaction without any id",
			header: formHeader(),
			body:   string(interaction(`{"type":"block_suggestion","user":{"id":"U3"},"value":"ab"}`)),
			err:    `wharf: invalid event identity: id from payload JSON "trigger_id" (or "user.id" and "action_ts" or "message_ts"): is missing`,
		},
		{
			name:   "interaction with a broken payload",
			header: formHeader(),
			body:   string(interaction(`{"type":`)),
			err:    `wharf: invalid event identity: id from payload JSON "trigger_id": body is not valid JSON: unexpected end at offset 8`,
		},
		{
			name:   "slash command",
			header: formHeader(),
			body:   "command=%2Fdeploy&text=prod&trigger_id=13345224609.738474920.8088930838d88f008e0&team_id=T1",
			want:   wharf.Identity{ID: "13345224609.738474920.8088930838d88f008e0", Type: "command.deploy"},
		},
		{
			name:   "slash command without trigger_id",
			header: formHeader(),
			body:   "command=%2Fdeploy&text=prod",
			err:    `wharf: invalid event identity: id from form "trigger_id": is missing`,
		},
		{
			name:   "unknown form",
			header: formHeader(),
			body:   "a=b",
			err:    `wharf: invalid event identity: id from slack form: the form body has neither payload nor command`,
		},
		{
			name:   "malformed form",
			header: formHeader(),
			body:   "payload=%zz",
			err:    `wharf: invalid event identity: id from slack form: the form body is malformed: invalid URL escape "%zz"`,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := v.Identify(c.header, []byte(c.body))
			if c.err != "" {
				require.ErrorIs(t, err, wharf.ErrInvalidIdentity)
				require.EqualError(t, err, c.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, c.want, got)
		})
	}
}

func TestSlackIdentityOverrides(t *testing.T) {
	t.Parallel()
	v := wharf.Slack("s")
	// FromJSON reads an interaction's payload.
	body := interaction(`{"type":"block_actions","user":{"id":"U1"},"trigger_id":"t1","channel":{"id":"C42"}}`)
	ident, err := wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("channel.id")}, v, formHeader(), body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "t1", Type: "interaction.block_actions", OrderingKey: "C42"}, ident)

	// A slash command has no JSON to read.
	_, err = wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("channel_id")}, v, formHeader(), []byte("command=%2Fx&trigger_id=t"))
	require.EqualError(t, err, `wharf: invalid event identity: ordering key from JSON "channel_id": a slash command's body is a form, not JSON`)

	// Events API: one channel's events in order.
	ident, err = wharf.IdentifyWith(wharf.SourceFields{OrderingKey: wharf.FromJSON("event.channel")}, v, jsonHeader(),
		[]byte(`{"type":"event_callback","event_id":"Ev9","event":{"type":"message","channel":"C1"}}`))
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "Ev9", Type: "message", OrderingKey: "C1"}, ident)
}

func TestSlackHandshake(t *testing.T) {
	t.Parallel()
	v := wharf.Slack("s")
	var _ wharf.Handshaker = v

	status, ct, resp, handled := v.Handshake(jsonHeader(), []byte(`{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}`))
	require.True(t, handled)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "text/plain; charset=utf-8", ct)
	require.Equal(t, "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", string(resp))

	status, _, resp, handled = v.Handshake(formHeader(), []byte("ssl_check=1&token=abc"))
	require.True(t, handled)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, resp)

	for name, c := range map[string]struct {
		header http.Header
		body   string
	}{
		"an event":                       {jsonHeader(), `{"type":"event_callback","event_id":"Ev1","event":{"type":"message","text":"url_verification"}}`},
		"url_verification without token": {jsonHeader(), `{"type":"url_verification"}`},
		"challenge not a string":         {jsonHeader(), `{"type":"url_verification","challenge":{"x":1}}`},
		"broken JSON":                    {jsonHeader(), `{"type":"url_verification",`},
		"a slash command":                {formHeader(), slackVectorBody},
		"ssl_check=0":                    {formHeader(), "ssl_check=0"},
	} {
		_, _, _, handled := v.Handshake(c.header, []byte(c.body))
		require.False(t, handled, name)
	}
}

// FromJSON reads an interaction's payload even when every field is
// overridden, so that no provider default is needed.
func TestSlackIdentityAllFieldsOverridden(t *testing.T) {
	t.Parallel()
	v := wharf.Slack("s")
	body := interaction(`{"type":"block_actions","user":{"id":"U1"},"trigger_id":"t1","channel":{"id":"C42"}}`)
	fields := wharf.SourceFields{ID: wharf.FromJSON("trigger_id"), Type: wharf.FromJSON("type"), OrderingKey: wharf.FromJSON("channel.id")}
	ident, err := wharf.IdentifyWith(fields, v, formHeader(), body)
	require.NoError(t, err)
	require.Equal(t, wharf.Identity{ID: "t1", Type: "block_actions", OrderingKey: "C42"}, ident)
}
