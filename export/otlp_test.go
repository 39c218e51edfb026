package export

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/internal/otlptest"
)

// deadCollector accepts TCP connections and never answers.
func deadCollector(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never read
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return lis.Addr().String()
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func TestDeadCollectorNeverBlocks(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+deadCollector(t))
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "256")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), UpstreamAddr: "db:5432"})
	if err != nil {
		t.Fatalf("New with a dead collector: %v", err)
	}
	if e.drops == nil {
		t.Fatal("OTLP span export is off despite OTEL_EXPORTER_OTLP_ENDPOINT")
	}

	// run times n Statement calls and returns the mean per call.
	run := func(n int) time.Duration {
		start := time.Now()
		for i := range n {
			s := stmt(qSelect, t0.Add(time.Duration(i)*time.Microsecond), time.Millisecond, parentTC)
			e.Statement(s, detector.Verdict{})
		}
		return time.Since(start) / time.Duration(n)
	}
	run(50)            // warm up
	before := run(200) // the queues have room
	deadline := time.Now().Add(30 * time.Second)
	start := time.Now()
	run(10_000)
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("10k statements took %v with a dead collector", d)
	}
	for e.SpansDropped() == 0 && time.Now().Before(deadline) {
		run(1000)
	}
	if e.SpansDropped() == 0 {
		t.Fatal("no span dropped: the queue to the dead collector never filled")
	}
	heap0 := heapInuse()
	after := run(20_000) // steady drop mode
	heap1 := heapInuse()
	t.Logf("per statement: %v with room in the queue, %v while dropping; %d spans dropped; heap %d → %d KiB",
		before, after, e.SpansDropped(), heap0>>10, heap1>>10)
	if after > 10*before+50*time.Microsecond {
		t.Errorf("per-statement cost rose from %v to %v with a dead collector", before, after)
	}
	if heap1 > heap0+16<<20 {
		t.Errorf("heap grew from %d to %d KiB over 20k dropped spans", heap0>>10, heap1>>10)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start = time.Now()
	_ = e.Shutdown(ctx) // reports the unfinished export; must not hang
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v with a dead collector", d)
	}
}

func TestOTLPToReceiver(t *testing.T) {
	clearOTelEnv(t)
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.Endpoint())
	t.Setenv("OTEL_SERVICE_NAME", "svc-from-env")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), Version: "9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	e.Statement(stmt(qSelect, t0, time.Millisecond, parentTC), detector.Verdict{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil { // flushes spans and metrics
		t.Fatalf("Shutdown: %v", err)
	}
	sp := rcv.WaitSpans(t, 5*time.Second, 1, func(otlptest.Span) bool { return true })[0]
	res := otlptest.Attrs(sp.Resource.GetAttributes())
	if res["service.name"] != "svc-from-env" || res["deployment.environment"] != "test" || res["service.version"] != "9.9.9" {
		t.Errorf("resource = %v", res)
	}
	if sp.Scope.GetName() != ScopeName || sp.Scope.GetVersion() != "9.9.9" {
		t.Errorf("scope = %v", sp.Scope)
	}
	rcv.WaitMetric(t, 5*time.Second, "db.client.operation.duration", func(m otlptest.Metric) bool {
		dps := m.GetHistogram().GetDataPoints()
		return len(dps) == 1 && dps[0].GetCount() == 1 && len(dps[0].GetExemplars()) == 1
	})
}

func TestOTLPSwitches(t *testing.T) {
	tests := []struct {
		name                 string
		env                  map[string]string
		wantTraces, wantHTTP bool
	}{
		{"no endpoint", nil, false, false},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}, false, false},
		{"traces exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}, false, false},
		{"http/protobuf", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTelEnv(t)
			t.Setenv("OTEL_TRACES_EXPORTER", "")
			var mu sync.Mutex
			paths := map[string]int{}
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				mu.Lock()
				paths[r.URL.Path]++
				mu.Unlock()
				w.Header().Set("Content-Type", "application/x-protobuf")
			}))
			defer hs.Close()
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			if tt.wantHTTP {
				t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", hs.URL)
			}
			e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if got := e.tp != nil; got != tt.wantTraces {
				t.Errorf("tracing on = %v, want %v", got, tt.wantTraces)
			}
			e.Statement(stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
			timeout := 500 * time.Millisecond // a refused endpoint only delays Shutdown
			if tt.wantHTTP {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			_ = e.Shutdown(ctx)
			mu.Lock()
			defer mu.Unlock()
			if tt.wantHTTP && (paths["/v1/traces"] == 0 || paths["/v1/metrics"] == 0) {
				t.Errorf("HTTP exporter requests: %v, want /v1/traces and /v1/metrics", paths)
			}
		})
	}
}
