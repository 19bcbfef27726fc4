// Package browsertest drives wharf's web console in a real headless
// Chromium with chromedp. It is a module of its own, so that chromedp and
// its dependencies stay out of wharf's go.mod; its go.mod points
// github.com/wharfhq/wharf at this checkout (replace ../..).
//
// Run it with .ci/browser, or:
//
//	cd console/browsertest && go test -count=1 ./...
//
// Set WHARF_SCREENSHOTS to a directory (docs/ for the README) to save
// console-overview.png, console-dlq.png and console-entry.png there.
package browsertest
