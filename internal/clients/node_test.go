package clients

// Issue 16 §5, Node: node-postgres with @opentelemetry/instrumentation-pg
// and addSqlCommenterCommentToQueries exports its own client spans; every
// statement span of pgtrace is a child of the pg span that ran it.

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/internal/otlptest"
)

// nodeDir is the Node client's folder; .ci/run runs `npm ci` there.
const nodeDir = "node"

// nodeCommand returns the command that runs the Node client, or fails the
// test naming what .ci/run installs.
func nodeCommand(t *testing.T) *exec.Cmd {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed: .ci/run installs nodejs and npm (apt) and runs `npm ci` in internal/clients/%s", nodeDir)
	}
	if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "@opentelemetry", "instrumentation-pg", "package.json")); err != nil {
		t.Fatalf("the Node client's packages are missing (%v): run `npm ci` in internal/clients/%s, as .ci/run does", err, nodeDir)
	}
	cmd := exec.Command(node, "app.js")
	cmd.Dir = nodeDir
	return cmd
}

func TestNodePg(t *testing.T) {
	const (
		requests = 3
		authors  = 6
	)
	cmd := nodeCommand(t)
	p := startProxy(t)
	p.seedAuthors(t, authors, 2)

	cmd.Env = append(os.Environ(), p.libpqEnv()...)
	cmd.Env = append(cmd.Env, "OTEL_SERVICE_NAME=node-app", "OTEL_RESOURCE_ATTRIBUTES=",
		"OTEL_EXPORTER_OTLP_ENDPOINT="+p.rcv.Endpoint(), "REQUESTS="+itoa(requests))
	reqs := runClient(t, cmd)
	if len(reqs) != requests {
		t.Fatalf("%d requests reported, want %d", len(reqs), requests)
	}

	for _, r := range reqs {
		// The pg client spans of the request: one per query.
		pgSpans := p.rcv.WaitSpans(t, wait, 1+authors, func(s otlptest.Span) bool {
			svc, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name")
			return svc == "node-app" && s.TraceID() == r.TraceID && s.ParentSpanID() == r.SpanID &&
				s.Scope.GetName() == "@opentelemetry/instrumentation-pg"
		})
		if len(pgSpans) != 1+authors {
			t.Errorf("request %s: %d pg spans, want %d", r.TraceID, len(pgSpans), 1+authors)
		}
		pgByID := map[string]otlptest.Span{}
		for _, s := range pgSpans {
			pgByID[s.SpanID()] = s
		}
		// pgtrace's statement spans: each the child of a distinct pg span.
		stmts := p.rcv.WaitSpans(t, wait, 1+authors, func(s otlptest.Span) bool {
			return isStatementSpan(s) && s.TraceID() == r.TraceID
		})
		parents := map[string]bool{}
		for _, s := range stmts {
			if _, ok := pgByID[s.ParentSpanID()]; !ok {
				t.Errorf("request %s: pgtrace span %q has parent %s, not one of the pg client spans", r.TraceID, s.GetName(), s.ParentSpanID())
			}
			parents[s.ParentSpanID()] = true
		}
		if len(stmts) != 1+authors || len(parents) != len(stmts) {
			t.Errorf("request %s: %d pgtrace statement spans under %d pg spans, want %d under %d",
				r.TraceID, len(stmts), len(parents), 1+authors, 1+authors)
		}
		// The N+1 is found in the request's trace, across the pg spans that
		// parented each execution.
		f := p.nPlusOnes(t, 1, func(f detector.Finding) bool { return f.TraceID == r.TraceID && f.Count == authors })[0]
		if _, ok := pgByID[f.ParentSpanID]; !ok {
			t.Errorf("request %s: N+1 finding parent %s is not a pg span", r.TraceID, f.ParentSpanID)
		}
	}
}
