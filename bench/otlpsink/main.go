// Command otlpsink is an OTLP/gRPC receiver that counts what it is sent and
// keeps nothing: the collector end of bench/compare.sh with EXPORT=1, so
// that pgtrace's exporters do all their work (protobuf, gRPC) while the
// receiver costs little. It prints its address, then, on SIGTERM or SIGINT,
// the spans and metric data points it received.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

type sink struct {
	coltracepb.UnimplementedTraceServiceServer
	colmetricpb.UnimplementedMetricsServiceServer
	spans, points atomic.Int64
}

func (s *sink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type metrics struct{ *sink }

func (m metrics) Export(_ context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, mt := range sm.GetMetrics() {
				n := len(mt.GetSum().GetDataPoints()) + len(mt.GetGauge().GetDataPoints()) + len(mt.GetHistogram().GetDataPoints())
				m.points.Add(int64(n))
			}
		}
	}
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("otlpsink: %v", err)
	}
	s := &sink{}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, s)
	colmetricpb.RegisterMetricsServiceServer(srv, metrics{s})
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
	fmt.Fprintf(os.Stderr, "otlpsink: received %d spans and %d metric data points\n", s.spans.Load(), s.points.Load())
}
