package admin

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestPageIsSelfContained(t *testing.T) {
	mux := http.NewServeMux()
	RegisterAPI(mux, fakeData(time.Now()), nil)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	body := rec.Body.String()
	// No external assets: nothing loaded from another origin, no src/href
	// attributes pointing anywhere, so the page works offline.
	if m := regexp.MustCompile(`(?i)(src|href)\s*=|@import|url\(|//[a-z0-9.-]+\.[a-z]{2,}/`).FindString(body); m != "" {
		t.Errorf("page references an external asset: %q", m)
	}
	for _, want := range []string{"api/queries", "api/findings", "api/connections", "api/pools", "setInterval", "Top queries", "Recent findings", "Live connections", "Pools"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Data reaches the DOM only as text.
	if strings.Contains(body, "innerHTML") {
		t.Error("page uses innerHTML")
	}
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q", csp)
	}
}

// chromium finds a headless browser: Debian's package is chromium
// (apt-get install chromium).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium in PATH: CI must install it (apt-get install -y chromium)")
	}
	t.Skip("no chromium in PATH (apt-get install -y chromium)")
	return ""
}

// runChromium runs a headless browser on url with extra flags and returns
// its standard output.
func runChromium(t *testing.T, bin, url string, extra ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(),
		"--window-size=1280,900",
		// Let the page's fetches and rendering finish before the dump or
		// the screenshot.
		"--virtual-time-budget=3000",
	}, extra...)
	args = append(args, url)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, stderr.Bytes())
	}
	return stdout.Bytes()
}

// TestPageScreenshot renders the page in headless Chromium against a
// server with fake data: the DOM must hold the data's rows, and the
// screenshot must be a real picture. Set PGTRACE_SCREENSHOT_DIR to keep
// page.png for a person to look at.
func TestPageScreenshot(t *testing.T) {
	bin := chromium(t)
	now := time.Now()
	mux := http.NewServeMux()
	RegisterAPI(mux, fakeData(now), fakeConns(now))
	RegisterPools(mux, "transaction", fakePools(now), fakeConns(now))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	dom := string(runChromium(t, bin, srv.URL+"/", "--dump-dom"))
	for _, want := range []string{
		"SELECT users", "SELECT orders", "INSERT carts", // query rows
		"N+1", "slow query", "3031323334353637…", // finding rows
		"nightly-export", "idle in transaction", "10.1.2.4:40000", // connection rows
		"700.0 ms", "450.0 ms", // numbers with units
		`<option value="connection_churn">connection churn</option>`, // the type filter, from api/finding-types
		`<option value="pool_exhausted">pool exhausted</option>`,
		"shop/shop", "warehouse/etl", "pool mode transaction", "2,500 ms", "812.5 ms", // pool rows
		"10.1.2.3:51000 · storefront · idle · pid 5101", // a client holding a server connection
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %q", want)
		}
	}
	// (The inline script is part of the dump: look for rendered markup.)
	if strings.Contains(dom, `class="status err"`) || strings.Contains(dom, `class="empty"`) {
		t.Errorf("page did not load its data")
	}
	if rows := strings.Count(dom, "<tr>"); rows < 4+3+3+3+2 {
		t.Errorf("%d table rows, want headers plus 3 queries, 3 findings, 3 connections, 2 pools", rows)
	}

	dir := t.TempDir()
	if keep := os.Getenv("PGTRACE_SCREENSHOT_DIR"); keep != "" {
		dir = keep
	}
	out := filepath.Join(dir, "page.png")
	os.Remove(out)
	runChromium(t, bin, srv.URL+"/", "--screenshot="+out)
	f, err := os.Open(out)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 900 {
		t.Errorf("screenshot is %v, want 1280×900", b)
	}
	// Non-trivial: many colours (text is anti-aliased), a dark header, and
	// mostly light content.
	colours := map[color.RGBA]bool{}
	var dark, light int
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
			colours[c] = true
			switch lum := int(c.R) + int(c.G) + int(c.B); {
			case lum < 200:
				dark++
			case lum > 600:
				light++
			}
		}
	}
	total := (b.Dx() / 2) * (b.Dy() / 2)
	if len(colours) < 50 || dark < total/100 || light < total/2 {
		t.Errorf("screenshot looks empty: %d colours, %d dark and %d light of %d pixels", len(colours), dark, light, total)
	}
	if headerDark(img) < 0.8 {
		t.Errorf("no dark header bar at the top of the screenshot")
	}
	t.Logf("screenshot %s: %d colours", out, len(colours))
}

// headerDark returns the share of dark pixels in the first 30 rows.
func headerDark(img image.Image) float64 {
	var dark, n int
	for y := 5; y < 30; y++ {
		for x := 0; x < img.Bounds().Dx(); x += 4 {
			r, g, b, _ := img.At(x, y).RGBA()
			n++
			if (r>>8)+(g>>8)+(b>>8) < 200 {
				dark++
			}
		}
	}
	return float64(dark) / float64(n)
}
