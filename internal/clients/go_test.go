package clients

// Issue 16 §1: a Go service using observe samples 10 % of its requests.
// Every request's statements still carry its trace context (flags -00 when
// unsampled), so pgtrace groups each request's N+1 by its trace at any
// ratio, follows the app's sampling decision for the statement spans, and
// the span it keeps anyway for the N+1 names the request's trace.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/observe"
)

func TestGoObserveAtRatio(t *testing.T) {
	const (
		ratio    = 0.1
		requests = 200
		authors  = 6 // one query per author: the N+1 (threshold 5)
	)
	p := startProxy(t)
	p.seedAuthors(t, authors, 2)

	// The app: observe's handler and database, sampling roots at 10 %.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	db, err := observe.OpenDB("pgx", p.dsn()+"&default_query_exec_mode=exec", observe.WithServiceName("go-app"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authors/report", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if err := authorsReport(ctx, db); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		sc := trace.SpanContextFromContext(ctx)
		_ = json.NewEncoder(w).Encode(request{TraceID: sc.TraceID().String(), SpanID: sc.SpanID().String(), Sampled: sc.IsSampled()})
	})
	app := httptest.NewServer(observe.NewHandler(mux, observe.WithTracerProvider(tp)))
	t.Cleanup(app.Close)

	// 200 requests, four at a time.
	reqs := make([]request, requests)
	var wg sync.WaitGroup
	errs := make(chan error, requests)
	sem := make(chan struct{}, 4)
	for i := range reqs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			resp, err := http.Get(app.URL + "/authors/report")
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
				return
			}
			if err := json.NewDecoder(resp.Body).Decode(&reqs[i]); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	byTrace := map[string]request{}
	sampled := 0
	for _, r := range reqs {
		byTrace[r.TraceID] = r
		if r.Sampled {
			sampled++
		}
	}
	if len(byTrace) != requests {
		t.Fatalf("%d distinct trace ids in %d requests", len(byTrace), requests)
	}
	// Ratio 0.1 of 200: 0 or 200 sampled would happen with a probability
	// below 1e-9 and would leave a half of this test without data.
	if sampled == 0 || sampled == requests {
		t.Fatalf("%d of %d requests sampled at ratio %v", sampled, requests, ratio)
	}
	t.Logf("%d of %d requests sampled", sampled, requests)

	// Findings: one N+1 per request, each under the request's trace and
	// server span, sampled or not.
	findings := p.nPlusOnes(t, requests, func(f detector.Finding) bool {
		_, ok := byTrace[f.TraceID]
		return ok && f.Count == authors // the finding grows past the threshold
	})
	perTrace := map[string]int{}
	for _, f := range findings {
		perTrace[f.TraceID]++
		r := byTrace[f.TraceID]
		if f.ParentSpanID != r.SpanID {
			t.Errorf("finding %+v: want parent %s", f, r.SpanID)
		}
	}
	if len(perTrace) != requests {
		t.Errorf("N+1 findings for %d requests, want %d", len(perTrace), requests)
	}
	for _, f := range p.Detector.Findings(detector.FindingNPlusOne, time.Time{}) {
		if f.TraceID == "" {
			t.Errorf("an N+1 finding without trace context (connection fallback): %+v", f)
		}
	}

	// Spans: a sampled request has all its statements (1 + one per
	// author) as children of its server span; an unsampled one has only
	// the execution pgtrace kept for the N+1, still in its trace and
	// under its span, and marked as kept.
	want := sampled*(1+authors) + (requests - sampled)
	spans := p.rcv.WaitSpans(t, wait, want, func(s otlptest.Span) bool {
		_, ok := byTrace[s.TraceID()]
		return ok && isStatementSpan(s)
	})
	got := map[string][]otlptest.Span{}
	for _, s := range spans {
		got[s.TraceID()] = append(got[s.TraceID()], s)
	}
	for id, r := range byTrace {
		ss := got[id]
		for _, s := range ss {
			if s.ParentSpanID() != r.SpanID {
				t.Errorf("trace %s: statement span %s has parent %s, want the request's span %s", id, s.GetName(), s.ParentSpanID(), r.SpanID)
			}
		}
		if r.Sampled {
			if len(ss) != 1+authors {
				t.Errorf("sampled request %s: %d statement spans, want %d", id, len(ss), 1+authors)
			}
			continue
		}
		if len(ss) != 1 {
			t.Errorf("unsampled request %s: %d statement spans, want 1 (the N+1 pgtrace keeps)", id, len(ss))
		}
		for _, s := range ss {
			if keep, _ := otlptest.Attr(s.GetAttributes(), "pgtrace.keep"); keep != "n_plus_one" {
				t.Errorf("unsampled request %s: span %s kept without pgtrace.keep=n_plus_one (%v)", id, s.GetName(), keep)
			}
		}
	}
}

// authorsReport is the app's N+1: the authors, then a query per author.
func authorsReport(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, "SELECT id FROM authors ORDER BY id")
	if err != nil {
		return fmt.Errorf("authors: %w", err)
	}
	var ids []int
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, id := range ids {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM books WHERE author_id = $1", id).Scan(&n); err != nil {
			return fmt.Errorf("books of %d: %w", id, err)
		}
	}
	return nil
}
