// Command otlpsink is an OTLP/gRPC receiver that counts what it is sent and
// keeps nothing: the collector end of bench/compare.sh with EXPORT=1, so
// that pgtrace's exporters do all their work (protobuf, gRPC) while the
// receiver costs little. It prints its address, then, on SIGTERM or SIGINT,
// the spans and metric data points it received and the CPU it used.
//
// It does not decode the requests into messages: it takes each request's
// bytes as they arrive and counts spans and data points by walking the
// protobuf wire format. A receiver that decodes (as a collector does)
// spends about 30 µs of CPU per statement span; on the 2-vCPU machines the
// benchmark runs on, that was taken from pgbench and PostgreSQL during
// pgtrace's runs only, though a real collector would mostly run elsewhere.
// A request that does not parse is answered with an error and counted.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	traceExport  = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
	metricExport = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
)

// rawCodec hands a request's bytes over as they are, and sends a response
// of the bytes given (the empty Export responses: zero bytes).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	p := v.(*[]byte)
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

type sink struct {
	spans, points, bad atomic.Int64
}

// handle serves every method: Export of traces or metrics.
func (s *sink) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	var n int64
	var err error
	switch method {
	case traceExport:
		// ExportTraceServiceRequest.resource_spans (1) →
		// ResourceSpans.scope_spans (2) → ScopeSpans.spans (2).
		n, err = count(req, []protowire.Number{1, 2, 2}, nil)
		s.spans.Add(n)
	case metricExport:
		// ExportMetricsServiceRequest.resource_metrics (1) →
		// ResourceMetrics.scope_metrics (2) → ScopeMetrics.metrics (2) →
		// Metric.gauge (5), sum (7) or histogram (9) → data_points (1).
		n, err = count(req, []protowire.Number{1, 2, 2}, []protowire.Number{5, 7, 9})
		s.points.Add(n)
	default:
		return status.Errorf(codes.Unimplemented, "otlpsink: unknown method %s", method)
	}
	if err != nil {
		s.bad.Add(1)
		return status.Errorf(codes.InvalidArgument, "otlpsink: %v", err)
	}
	empty := []byte{}
	return stream.SendMsg(&empty)
}

var errMalformed = errors.New("malformed protobuf")

// count walks b down the message fields in path and counts the innermost
// ones; with kinds, it goes one level further, into any of those fields,
// and counts their field 1 (data points).
func count(b []byte, path, kinds []protowire.Number) (int64, error) {
	var n int64
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return n, errMalformed
		}
		b = b[l:]
		if typ != protowire.BytesType {
			l = protowire.ConsumeFieldValue(num, typ, b)
			if l < 0 {
				return n, errMalformed
			}
			b = b[l:]
			continue
		}
		v, l := protowire.ConsumeBytes(b)
		if l < 0 {
			return n, errMalformed
		}
		b = b[l:]
		switch {
		case len(path) > 0 && num == path[0]:
			if len(path) == 1 && kinds == nil {
				n++
				continue
			}
			m, err := count(v, path[1:], kinds)
			n += m
			if err != nil {
				return n, err
			}
		case len(path) == 0 && isOneOf(num, kinds):
			m, err := count(v, []protowire.Number{1}, nil)
			n += m
			if err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func isOneOf(num protowire.Number, set []protowire.Number) bool {
	for _, k := range set {
		if num == k {
			return true
		}
	}
	return false
}

// cpuTime is the CPU time (user + system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("otlpsink: %v", err)
	}
	s := &sink{}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(s.handle))
	fmt.Println(lis.Addr())
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("otlpsink: %v", err)
	}
	fmt.Fprintf(os.Stderr, "otlpsink: received %d spans and %d metric data points (%d malformed requests); used %v of CPU\n",
		s.spans.Load(), s.points.Load(), s.bad.Load(), cpuTime().Round(time.Millisecond))
}
