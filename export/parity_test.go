package export

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/wire"
)

// TestSpanPathParity sends the same connections and statements through
// the fast span path and the SDK path, each over OTLP/gRPC to its own
// in-process receiver, and compares what the receivers got span by span:
// resource (the per-application services included), scope, name, kind,
// times, every attribute, events, links, status, flags, and where each
// span sits in its trace. Only the random ids differ; they are compared
// by what they point to.
func TestSpanPathParity(t *testing.T) {
	got := map[string][]paritySpan{}
	for _, path := range []string{SpanPathFast, SpanPathSDK} {
		clearOTLPTargetEnv(t)
		rcv := otlptest.Start(t)
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.Endpoint())
		t.Setenv("OTEL_SERVICE_NAME", "pgtrace-parity")
		t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
		t.Setenv("OTEL_METRICS_EXPORTER", "none")
		e, err := New(context.Background(), Config{
			Logger: slog.New(slog.DiscardHandler), UpstreamAddr: "db.internal:5432", Version: "1.2.3",
			KeepSlowSpans: true, SlowThreshold: 100 * time.Millisecond,
			ServiceNameFrom: ServiceFromApplicationName, SpanPath: path, PoolWaitSpanThreshold: time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		n := parityWorkload(e)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := e.Shutdown(ctx); err != nil {
			t.Fatalf("%s: Shutdown: %v", path, err)
		}
		cancel()
		got[path] = flattenSpans(rcv.WaitSpans(t, 10*time.Second, n, func(otlptest.Span) bool { return true }))
		if len(got[path]) != n {
			t.Fatalf("%s: %d spans, want %d", path, len(got[path]), n)
		}
	}
	fast, sdk := got[SpanPathFast], got[SpanPathSDK]
	services := map[any]bool{}
	for _, s := range fast {
		services[s.Resource["service.name"]] = true
	}
	for _, want := range []string{"pgtrace-parity", "api", "billing"} {
		if !services[want] {
			t.Errorf("no span under service %s: the test does not test the per-application resources (%v)", want, services)
		}
	}
	for i := range fast {
		if diff := gocmp.Diff(sdk[i], fast[i]); diff != "" {
			t.Errorf("span %s differs (-sdk +fast):\n%s", fast[i].Key, diff)
		}
	}
}

// parityWorkload drives e through what the parity test compares and
// returns how many spans it makes: a connect span, root and child
// statements, a failed one (its message scrubbed), a slow one under an
// unsampled parent (kept), an N+1 crossing, tags, a transaction with a
// statement under another parent (a link), a second application, and
// statements that waited for a server connection (pool wait spans beside
// a child and under a root, and a wait too short for one).
func parityWorkload(e *Exporter) int {
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	billing := testConn
	billing.ID, billing.Application = 8, "billing"
	e.Conn(wire.Event{Kind: wire.ConnOpened, Time: at(0), Conn: testConn})
	e.Conn(wire.Event{Kind: wire.ConnAuthenticated, Time: at(1), Conn: testConn, ConnectDuration: time.Millisecond})

	e.Statement(stmt(qSelect, at(2), time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
	e.Statement(stmt(qSelect, at(4), time.Millisecond, parentTC), detector.Verdict{})
	e.Statement(failed(stmt(qInsert, at(6), time.Millisecond, parentTC), "22P02",
		`invalid input syntax for type integer: "4111 1111"`), detector.Verdict{})
	unsampled := parentTC
	unsampled.Flags = 0
	e.Statement(stmt(qSelect, at(8), 300*time.Millisecond, unsampled), detector.Verdict{Slow: true})
	tagged := stmt(qSelect, at(310), time.Millisecond, parentTC)
	tagged.Tags = &fingerprint.Tags{Route: "/partners/{id}", Tenant: "acme", Controller: "c", Action: "a", Framework: "f"}
	e.Statement(tagged, detector.Verdict{NPlusOne: true, NPlusOneDetected: true, NPlusOneCount: 5})

	begin := stmt(qBegin, at(320), time.Millisecond, fingerprint.TraceContext{})
	begin.Stmt.TxStatus = wire.TxInBlock
	e.Statement(begin, detector.Verdict{})
	insert := waited(stmt(qInsert, at(322), time.Millisecond, parentTC), at(321), 900*time.Microsecond) // no wait span
	insert.Stmt.TxStatus = wire.TxInBlock
	e.Statement(insert, detector.Verdict{})
	other := parentTC
	other.SpanID = [8]byte{9, 9, 9, 9, 9, 9, 9, 9}
	linked := stmt(qSelect, at(324), time.Millisecond, other)
	linked.Stmt.TxStatus = wire.TxInBlock
	e.Statement(linked, detector.Verdict{})
	e.Statement(stmt(qCommit, at(326), time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})

	b := waited(stmt(qSelect, at(330), time.Millisecond, parentTC), at(328), 2*time.Millisecond)
	b.Conn = &billing
	e.Statement(b, detector.Verdict{})
	// A root statement that waited: its wait under its span.
	e.Statement(waited(stmt(qSelect, at(340), time.Millisecond, fingerprint.TraceContext{}), at(335), 5*time.Millisecond), detector.Verdict{})
	e.Conn(wire.Event{Kind: wire.ConnClosed, Time: at(400), Conn: testConn, Side: wire.SideClient})
	// connect + 5 statements + BEGIN, INSERT, SELECT, COMMIT and their
	// transaction + billing's and its wait + a root statement and its
	// wait.
	return 1 + 5 + 4 + 1 + 2 + 2
}

// paritySpan is a received span with its ids replaced by what they point
// to: the key of a span of the same set, or the id from a comment.
type paritySpan struct {
	Key             string // name@start
	Resource        map[string]any
	Scope, Version  string
	Kind            string
	Start, End      uint64
	Attrs           map[string]any
	Events          []string
	Links           []string
	Status          string
	Flags           uint32
	TraceState      string
	Parent, Trace   string
	DroppedAttrs    uint32
	DroppedEvents   uint32
	DroppedLinks    uint32
	ResourceSchema  string
	ScopeAttributes map[string]any
}

func flattenSpans(spans []otlptest.Span) []paritySpan {
	key := func(s otlptest.Span) string { return fmt.Sprintf("%s@%d", s.GetName(), s.GetStartTimeUnixNano()) }
	byID := map[string]string{}
	traceRoot := map[string]string{} // trace id → key of its earliest span
	for _, s := range spans {
		byID[s.SpanID()] = key(s)
		if r, ok := traceRoot[s.TraceID()]; !ok || key(s) < r {
			traceRoot[s.TraceID()] = key(s)
		}
	}
	ref := func(id string) string {
		if k, ok := byID[id]; ok {
			return k
		}
		return id // a parent from a comment: the same on both paths
	}
	out := make([]paritySpan, 0, len(spans))
	for _, s := range spans {
		p := paritySpan{
			Key: key(s), Resource: otlptest.Attrs(s.Resource.GetAttributes()),
			Scope: s.Scope.GetName(), Version: s.Scope.GetVersion(), ScopeAttributes: otlptest.Attrs(s.Scope.GetAttributes()),
			Kind: s.GetKind().String(), Start: s.GetStartTimeUnixNano(), End: s.GetEndTimeUnixNano(),
			Attrs: otlptest.Attrs(s.GetAttributes()), Status: s.GetStatus().GetCode().String() + " " + s.GetStatus().GetMessage(),
			Flags: s.GetFlags(), TraceState: s.GetTraceState(),
			DroppedAttrs: s.GetDroppedAttributesCount(), DroppedEvents: s.GetDroppedEventsCount(), DroppedLinks: s.GetDroppedLinksCount(),
		}
		if s.ParentSpanID() != "" {
			p.Parent = ref(s.ParentSpanID())
		}
		p.Trace = s.TraceID()
		if s.TraceID() != hex.EncodeToString(parentTC.TraceID[:]) {
			p.Trace = "trace of " + traceRoot[s.TraceID()]
		}
		for _, ev := range s.GetEvents() {
			p.Events = append(p.Events, fmt.Sprintf("%s@%d %v", ev.GetName(), ev.GetTimeUnixNano(), otlptest.Attrs(ev.GetAttributes())))
		}
		for _, l := range s.GetLinks() {
			p.Links = append(p.Links, ref(hex.EncodeToString(l.GetSpanId())))
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b paritySpan) int { return cmp.Compare(a.Key, b.Key) })
	return out
}
