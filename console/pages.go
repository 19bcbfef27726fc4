package console

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/wharfhq/wharf/dlq"
)

//go:embed templates
var templateFS embed.FS

// pageNames are the templates in templates/, each rendered inside
// layout.html.
var pageNames = []string{"overview", "dlq_list", "dlq_entry", "bulk_replay", "events", "error"}

// pages holds one parsed template set per page.
type pages struct {
	byName map[string]*template.Template
}

// parsePages parses every page with the layout, the audit trail partial
// and the helpers.
func parsePages() (*pages, error) {
	p := &pages{byName: map[string]*template.Template{}}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/trail.html", "templates/"+name+".html")
		if err != nil {
			return nil, err
		}
		p.byName[name] = t
	}
	return p, nil
}

// layout is what every page gets: its own data in Data, and what the
// layout and forms need around it.
type layout struct {
	Title   string
	Base    string // the mount prefix, for links
	Actions bool   // replay, discard, pause and resume enabled
	CSRF    string // the token for forms; "" when actions are disabled
	Audit   bool   // the audit lookup is available
	DLQ     bool   // the dead-letter pages are available
	Data    any
}

// render executes page into a buffer, so a template error becomes a clean
// 500 instead of half a page, then writes it with status.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, page, title string, data any) {
	l := layout{
		Title:   title,
		Base:    basePath(r),
		Actions: c.cfg.AllowActions,
		Audit:   c.parts.audit != nil,
		DLQ:     c.parts.dlq != nil,
		Data:    data,
	}
	if l.Actions {
		l.CSRF = c.csrf.token()
	}
	var buf bytes.Buffer
	if err := c.pages.byName[page].Execute(&buf, l); err != nil {
		c.log.ErrorContext(r.Context(), "console: render", "page", page, "error", err)
		http.Error(w, "console: the page could not be rendered; the error is in the service's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// funcs are the templates' helpers; all return text that html/template
// escapes like any other.
var funcs = template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"ago":  func(t time.Time) string { return roundDuration(time.Since(t)) + " ago" },
	"dur":  roundDuration,
	"join": strings.Join,
	"now":  time.Now,
	"lastError": func(e dlq.Entry) string {
		if len(e.Errors) == 0 {
			return ""
		}
		msg := e.Errors[len(e.Errors)-1].Error
		if len(msg) > 160 {
			msg = strings.ToValidUTF8(msg[:160], "") + "…"
		}
		return msg
	},
}

// roundDuration prints d to a precision a person reads at a glance:
// "850ms", "42s", "3m12s", "5h4m", "3d2h".
func roundDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	default:
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
	}
}
