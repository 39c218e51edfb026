// Command partners is the example service of the pgtrace companion package
// observe: a small partner-program API on net/http and database/sql (pgx),
// instrumented with observe, meant to run with its DSN pointed at pgtrace.
//
// Configuration comes from the environment:
//
//	PARTNERS_DSN    PostgreSQL URL (required), e.g. postgres://app@127.0.0.1:6432/app
//	PARTNERS_ADDR   listen address, default 127.0.0.1:8080
//	OTEL_*          OpenTelemetry settings (endpoint, protocol, sampler, …)
//	OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
//	                service.name (default "partners") and other resource attributes
//	SERVICE_VERSION service.version, unless OTEL_RESOURCE_ATTRIBUTES sets it
//	ENVIRONMENT     deployment.environment.name
//
// On start it creates and seeds its schema (idempotent) and logs
// "listening addr=…" once it accepts requests. Every endpoint requires the
// x-tenant-id header:
//
//	GET  /partners/report             partners with customer counts and commission totals, one query
//	GET  /partners/report-n-plus-one  the same answer with a query per partner (a deliberate N+1)
//	GET  /partners/{id}               one partner with its customers
//	POST /partners/{id}/commissions   record a commission {"customer_id":1,"base":1000,"rate":0.1}
//	GET  /debug/observability         trace_id, span_id and sampled of the request
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "partners:", err)
		os.Exit(1)
	}
}
