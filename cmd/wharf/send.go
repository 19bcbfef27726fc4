package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/wharfhq/wharf"
)

// provider builds and signs a test webhook the way one provider does.
type provider struct {
	// body is the default body of an event: where the provider puts the
	// id and the type, if in the body.
	body func(id, eventType string) any
	// sign returns the headers of a request with body: the signature and,
	// for providers that send them in headers, the id and the type. It
	// panics on a secret the provider's verifier refuses.
	sign func(secret, id, eventType string, ts time.Time, body []byte) http.Header
}

// providers are the senders wharf send imitates, with the default identity
// each of wharf's verifiers reads.
var providers = map[string]provider{
	"stripe": {
		body: func(id, typ string) any {
			return map[string]any{"id": id, "object": "event", "type": typ, "data": map[string]any{"object": map[string]any{}}}
		},
		sign: func(secret, _, _ string, ts time.Time, body []byte) http.Header {
			return wharf.SignStripe(secret, ts, body)
		},
	},
	"standard-webhooks": {
		body: func(_, typ string) any { return map[string]any{"type": typ, "data": map[string]any{}} },
		sign: func(secret, id, _ string, ts time.Time, body []byte) http.Header {
			return wharf.SignStandardWebhooks(secret, id, ts, body)
		},
	},
	"github": {
		body: func(string, string) any { return map[string]any{} },
		sign: func(secret, id, typ string, _ time.Time, body []byte) http.Header {
			h := wharf.SignGitHub(secret, body)
			h.Set("X-GitHub-Delivery", id)
			h.Set("X-GitHub-Event", typ)
			return h
		},
	},
	"shopify": {
		body: func(string, string) any { return map[string]any{} },
		sign: func(secret, id, typ string, _ time.Time, body []byte) http.Header {
			h := wharf.SignShopify(secret, body)
			h.Set("X-Shopify-Topic", typ)
			h.Set("X-Shopify-Event-Id", id)
			return h
		},
	},
	"slack": {
		body: func(id, typ string) any {
			return map[string]any{"type": "event_callback", "event_id": id, "event": map[string]any{"type": typ}}
		},
		sign: func(secret, _, _ string, ts time.Time, body []byte) http.Header {
			return wharf.SignSlack(secret, ts, body)
		},
	},
}

var sendCommand = &command{
	name:    "send",
	summary: "sign and POST a test webhook, as a provider would",
	args:    " URL",
	help: `wharf send signs a webhook the way a provider does and POSTs it to URL (like
stripe trigger), then prints the answer's status and body: 202 when the
endpoint stored it, 200 when it was a duplicate (send the same --id twice),
401 when the signature does not match the endpoint's secret. Any answer but
2xx exits 1.

Without --body, the body is the provider's minimal event carrying --id and
--type where wharf's verifier reads them (the body for Stripe, Standard
Webhooks and Slack; the headers for GitHub and Shopify, which get --type as
X-GitHub-Event or X-Shopify-Topic). With --body, the file is sent verbatim:
--id and --type then only fill the provider's headers. Providers:
stripe, standard-webhooks (secret "whsec_<base64>"), github, shopify, slack.

Examples:
  wharf send --provider stripe --secret whsec_test --type invoice.paid http://localhost:8080/webhooks/stripe
  wharf send --provider github --secret s3cret --type push --id 1 http://localhost:8080/webhooks/github
  wharf send --provider stripe --secret whsec_test --body event.json http://localhost:8080/webhooks/stripe
  jq -c . event.json | wharf send --provider slack --secret abc --body - http://localhost:8080/webhooks/slack`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		const path = "wharf send"
		var p provider
		names := slices.Sorted(maps.Keys(providers))
		fs.Func("provider", "how to sign and where the id and type go: "+strings.Join(names, ", ")+" (required)", func(s string) error {
			var ok bool
			if p, ok = providers[s]; !ok {
				return fmt.Errorf("want one of %s", strings.Join(names, ", "))
			}
			return nil
		})
		secret := fs.String("secret", "", "the signing secret the endpoint verifies with (required)")
		eventType := fs.String("type", "", "the event type (e.g. invoice.paid); required without --body")
		id := fs.String("id", "", "the event id, which the endpoint deduplicates on; defaults to a random evt_cli_...")
		bodyFile := fs.String("body", "", "send this file's content as the body (- for stdin) instead of a minimal event")
		timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the answer")
		return func(ctx context.Context, e *env, args []string) error {
			switch {
			case len(args) != 1:
				return &usageError{path, errors.New("want the endpoint's URL")}
			case p.sign == nil:
				return &usageError{path, errors.New("-provider is required")}
			case *secret == "":
				return &usageError{path, errors.New("-secret is required")}
			case *eventType == "" && *bodyFile == "":
				return &usageError{path, errors.New("-type is required without -body")}
			}
			if *id == "" {
				*id = "evt_cli_" + strings.ToLower(rand.Text())
			}
			body, err := sendBody(e, p, *bodyFile, *id, *eventType)
			if err != nil {
				return err
			}
			header, err := signSafely(p, *secret, *id, *eventType, body)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(ctx, *timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, args[0], bytes.NewReader(body))
			if err != nil {
				return &usageError{path, fmt.Errorf("url %q: %w", args[0], err)}
			}
			req.Header = header
			if json.Valid(body) {
				req.Header.Set("Content-Type", "application/json")
			} else {
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded") // Slack's interactions
			}
			req.Header.Set("User-Agent", "wharf-send")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("send event %q: %w", *id, err)
			}
			defer resp.Body.Close()
			answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if err != nil {
				return fmt.Errorf("read the answer: %w", err)
			}
			fmt.Fprintf(e.stdout, "event %s: %s\n%s", *id, resp.Status, answer)
			if len(answer) > 0 && !bytes.HasSuffix(answer, []byte("\n")) {
				fmt.Fprintln(e.stdout)
			}
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return fmt.Errorf("event %s: the endpoint answered %s, not 2xx", *id, resp.Status)
			}
			return nil
		}
	},
}

// sendBody is the file's content, stdin's for "-", or p's default event.
func sendBody(e *env, p provider, file, id, eventType string) ([]byte, error) {
	switch file {
	case "":
		return json.Marshal(p.body(id, eventType))
	case "-":
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return nil, fmt.Errorf("read the body from stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read the body: %w", err)
	}
	return b, nil
}

// signSafely calls p.sign, turning the panic of wharf's Sign functions on
// a secret the verifier would refuse into an error.
func signSafely(p provider, secret, id, eventType string, body []byte) (h http.Header, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sign: %v", r)
		}
	}()
	return p.sign(secret, id, eventType, time.Now(), body), nil
}
