package pipeline_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/pipeline"
)

// TestTagsDoNotRetainStatementTexts observes long statements, each of its
// own fingerprint, that carry sqlcommenter tags. The detector and the
// exporter keep the tags (per fingerprint, in metric label sets), but must
// not keep the texts they were read from. Two layers see to it: Analyze
// copies the tags of long texts, and both keep copies of what they store;
// the test fails only when both are gone.
func TestTagsDoNotRetainStatementTexts(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	log := slog.New(slog.DiscardHandler)
	exp, err := export.New(context.Background(), export.Config{UpstreamAddr: "db:5432", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exp.Shutdown(context.Background()) })
	det := detector.New(detector.Config{})
	pl := pipeline.New(pipeline.Config{Analyzer: fingerprint.New(fingerprint.Config{}), Detector: det, Exporter: exp, Logger: log})

	const n, size = 200, 100 << 10 // 20 MiB of statement text
	before := heapInUse()
	for i := range n {
		var b strings.Builder
		fmt.Fprintf(&b, "SELECT * FROM t%d WHERE id IN (", i)
		for b.Len() < size {
			b.WriteString("12345,")
		}
		fmt.Fprintf(&b, "1) /*tenant_id='tenant%d',application='billing'*/", i)
		pl.Observe(stmtEvent(b.String(), time.Millisecond, nil))
	}
	if got := det.Stats().Fingerprints; got != n {
		t.Fatalf("detector kept %d fingerprints, want %d", got, n)
	}
	if grown := heapInUse() - before; grown > 5<<20 {
		t.Errorf("heap grew by %d MiB after observing %d MiB of statements", grown>>20, n*size>>20)
	}
	runtime.KeepAlive(pl)
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
