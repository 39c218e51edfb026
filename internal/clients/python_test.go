package clients

// Issue 16 §5, Python: SQLAlchemy over psycopg2 (Debian's packages) with a
// before_cursor_execute hook that appends a sqlcommenter comment. pgtrace
// parents every statement under the request's span, fingerprints the lazy
// loads as one query whatever the literal, and flags their N+1.

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/internal/otlptest"
)

// pythonCommand returns the command that runs the Python client, or fails
// the test naming what .ci/run installs. Debian's packages install for
// Debian's interpreter, /usr/bin/python3, which a python3 earlier on PATH
// (pyenv, a virtualenv) would not see.
func pythonCommand(t *testing.T) *exec.Cmd {
	t.Helper()
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		if python, err = exec.LookPath("python3"); err != nil {
			t.Fatal("python3 is not installed: .ci/run installs python3-sqlalchemy and python3-psycopg2 (apt), which bring it")
		}
	}
	if out, err := exec.Command(python, "-c", "import sqlalchemy, psycopg2").CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import sqlalchemy and psycopg2 (%v: %s): .ci/run installs python3-sqlalchemy and python3-psycopg2 (apt)",
			python, err, strings.TrimSpace(string(out)))
	}
	cmd := exec.Command(python, "lazy_load.py")
	cmd.Dir = "python"
	return cmd
}

func TestPythonSQLAlchemyLazyLoad(t *testing.T) {
	const (
		requests = 3
		authors  = 6
	)
	cmd := pythonCommand(t)
	p := startProxy(t)
	cmd.Env = append(os.Environ(), p.libpqEnv()...)
	cmd.Env = append(cmd.Env, "REQUESTS="+itoa(requests), "AUTHORS="+itoa(authors))
	reqs := runClient(t, cmd)
	if len(reqs) != requests {
		t.Fatalf("%d requests reported, want %d", len(reqs), requests)
	}

	fingerprints := map[string]bool{} // of the lazy loads, across requests
	for _, r := range reqs {
		// The authors query and one lazy load per author, with the hook's
		// tags, all under the request's span: directly, or through the
		// span pgtrace makes for their transaction (SQLAlchemy's session
		// runs them in one; psycopg2 sends its BEGIN and ROLLBACK without
		// the hook, so those take the transaction's context).
		all := p.rcv.WaitSpans(t, wait, 3+authors, func(s otlptest.Span) bool {
			svc, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name")
			return svc == proxyService && s.TraceID() == r.TraceID
		})
		byID := map[string]otlptest.Span{}
		for _, s := range all {
			byID[s.SpanID()] = s
		}
		var selects, lazy []otlptest.Span
		for _, s := range all {
			a := otlptest.Attrs(s.GetAttributes())
			if !isStatementSpan(s) || a["db.operation.name"] != "SELECT" {
				continue
			}
			selects = append(selects, s)
			if up := appAncestor(s, byID); up != r.SpanID {
				t.Errorf("request %s: span %q is under %s, want the request's %s", r.TraceID, s.GetName(), up, r.SpanID)
			}
			if a["pgtrace.route"] != "/authors/{id}/books" || a["pgtrace.application"] != "python-app" {
				t.Errorf("request %s: span %q route %v, application %v", r.TraceID, s.GetName(), a["pgtrace.route"], a["pgtrace.application"])
			}
			if a["db.collection.name"] == "books" {
				lazy = append(lazy, s)
			}
		}
		if len(selects) != 1+authors || len(lazy) != authors {
			t.Fatalf("request %s: %d SELECT spans, %d of them on books; want %d and %d", r.TraceID, len(selects), len(lazy), 1+authors, authors)
		}
		flagged := false
		for _, s := range lazy {
			a := otlptest.Attrs(s.GetAttributes())
			fingerprints[a["pgtrace.fingerprint"].(string)] = true
			// psycopg2 interpolates the author id as a literal; pgtrace
			// exports the normalized text.
			if text, _ := a["db.query.text"].(string); !strings.Contains(text, "$1") || strings.Contains(text, "/*") {
				t.Errorf("request %s: db.query.text %q, want it normalized without the comment", r.TraceID, text)
			}
			if a["pgtrace.n_plus_one"] == true {
				flagged = true
			}
		}
		if !flagged {
			t.Errorf("request %s: no lazy-load span has pgtrace.n_plus_one", r.TraceID)
		}

		f := p.nPlusOnes(t, 1, func(f detector.Finding) bool { return f.TraceID == r.TraceID && f.Count == authors })[0]
		if f.ParentSpanID != r.SpanID || !fingerprints[f.Fingerprint] {
			t.Errorf("request %s: N+1 finding %+v, want parent %s and the lazy load's fingerprint %v", r.TraceID, f, r.SpanID, fingerprints)
		}
	}
	if len(fingerprints) != 1 {
		t.Errorf("the lazy loads have %d fingerprints, want 1: %v", len(fingerprints), fingerprints)
	}
}

// appAncestor follows s's parents through pgtrace's own spans (byID: a
// transaction span) and returns the first parent span id that is not
// pgtrace's: the application's span the statement belongs to.
func appAncestor(s otlptest.Span, byID map[string]otlptest.Span) string {
	for range len(byID) + 1 {
		parent, ok := byID[s.ParentSpanID()]
		if !ok {
			return s.ParentSpanID()
		}
		s = parent
	}
	return "(a cycle)"
}
