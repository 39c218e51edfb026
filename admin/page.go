package admin

import (
	_ "embed"
	"net/http"
)

// pageHTML is the page served at /: one self-contained file (inline CSS
// and script, no external assets) that polls the /api/ routes, so it works
// offline and behind any path prefix (it uses relative URLs).
//
//go:embed page.html
var pageHTML []byte

func servePage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	// Everything is inline and same-origin; the script builds the DOM with
	// textContent only, never HTML from data.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
	w.Write(pageHTML)
}
