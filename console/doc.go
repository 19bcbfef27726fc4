// Package console is wharf's web console: an http.Handler that a service
// mounts under a prefix of its choosing, behind its own authentication,
// for operators who need to see what the webhook pipeline is doing and put
// failed events back to work, at 3 a.m., from a browser.
//
//	c, err := console.New(console.Config{Pipeline: p, AllowActions: true})
//	if err != nil { ... }
//	mux.Handle("/wharf/", http.StripPrefix("/wharf", requireOperator(c)))
//
// Give it the *wharf.Pipeline, or only the pieces a service uses (a DLQ,
// a Queue, a breaker Registry, an event Log, an idempotency Store): each
// page shows what its pieces allow, and the others are left out.
//
// # Pages
//
//	GET  /                     overview: queue depth by state, source and type, the
//	                           oldest due event's wait, paused sources and handlers,
//	                           types waiting without a handler, dead letters by
//	                           status, breaker states, events processed per minute
//	GET  /dlq                  dead letters, newest first, filtered by source, type,
//	                           handler, error text, status and time of death
//	                           (since/until, UTC; upto, the set a bulk replay
//	                           pinned), one keyset page at a time
//	GET  /dlq/{id}             one dead letter: its errors, headers (secrets masked),
//	                           raw body (JSON indented) and audit trail
//	GET  /dlq/replay           how many dead letters a filter matches, pinned to the
//	                           newest of them (dlq.DLQ.Pin, as wharf dlq replay),
//	                           and the form that replays them
//	POST /dlq/replay           replay them, unless the pinned set holds another
//	                           number by now
//	POST /dlq/{id}/replay      replay one
//	POST /dlq/{id}/discard     discard one
//	POST /pauses               pause a source or a handler (kind, name, reason):
//	                           every replica's workers leave its events queued;
//	                           like wharf pause, it warns when no queued event,
//	                           dead letter or processed event has the name
//	                           (likely misspelled), and pauses all the same
//	POST /pauses/resume        resume one (kind, name)
//	GET  /events?source=&id=   the audit trail of one delivery (wharf.DeliveryStream)
//	GET  /static/console.css   the one stylesheet
//
// Throughput comes from the handlers' idempotency claims (processed_events,
// by the minute they committed), which exist whether or not the audit log
// is on. Everything is rendered on the server with html/template from
// files embedded in the binary: no script, no CDN, no build step.
//
// # Safety
//
// The console is read-only unless Config.AllowActions is set: without it
// no button is rendered and every POST is answered 403. GETs never change
// anything. Each POST must come from the console's own origin (the
// browser's Sec-Fetch-Site or Origin header, http.CrossOriginProtection)
// and carry a token from the page's form: a timestamp signed with HMAC-SHA256
// under a key of the console's own (Config.CSRFKey), compared in constant
// time and valid for Config.TokenTTL. No session or cookie is needed, so
// any authentication middleware in front works.
//
// The entry page never renders a secret: the values of the headers
// dlq.SecretHeader names, which wharf dlq show masks too (X-Trello-Webhook,
// X-Amzn-Oidc-Data and every header whose name contains key, auth,
// password, secret, token, signature, hmac, cookie, session, credential,
// verification, -sig, hash, jwt or assertion, in any case, an underscore
// counting as a hyphen: Authorization, Cookie, Stripe-Signature,
// X-Hub-Signature-256, X-Shopify-Hmac-Sha256, X-Api-Key,
// Cf-Access-Jwt-Assertion, ...), and of Config.MaskHeaders are masked
// before they reach the template. Every answer forbids framing, caching
// and scripts (Content-Security-Policy).
// A malformed entry id, or one that names no entry, is 404; a filter the
// console cannot read is 400 with a message saying which field and why,
// and so is a pause or resume whose target or reason the queue refuses
// (queue.ErrInvalidPause).
package console
