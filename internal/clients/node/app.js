'use strict';
// A Node client of pgtrace, as a Node service would be set up: node-postgres
// (pg) instrumented by @opentelemetry/instrumentation-pg with
// addSqlCommenterCommentToQueries, so that every query carries the
// traceparent of its own pg client span; spans go over OTLP/gRPC to
// OTEL_EXPORTER_OTLP_ENDPOINT. The connection comes from libpq's variables
// (PGHOST, PGPORT, ...), pointed at pgtrace.
//
// It plays REQUESTS requests, each a span with an N+1 inside (the authors,
// then one query per author), and prints one JSON line: the trace and span
// ids of the requests.

const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { registerInstrumentations } = require('@opentelemetry/instrumentation');
const { PgInstrumentation } = require('@opentelemetry/instrumentation-pg');
const api = require('@opentelemetry/api');

const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ 'service.name': process.env.OTEL_SERVICE_NAME || 'node-app' }),
  spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
});
provider.register();
registerInstrumentations({
  instrumentations: [new PgInstrumentation({ addSqlCommenterCommentToQueries: true })],
});

// pg is loaded after the instrumentation is registered, so that it is patched.
const { Client } = require('pg');

async function main() {
  const requests = Number(process.env.REQUESTS || 1);
  const client = new Client({ application_name: 'node-app' });
  await client.connect();
  const tracer = api.trace.getTracer('node-app');
  const out = [];
  for (let i = 0; i < requests; i++) {
    await tracer.startActiveSpan('GET /authors/report', async (span) => {
      try {
        const { rows } = await client.query('SELECT id FROM authors ORDER BY id');
        for (const row of rows) {
          await client.query('SELECT title FROM books WHERE author_id = $1', [row.id]);
        }
        const sc = span.spanContext();
        out.push({ trace_id: sc.traceId, span_id: sc.spanId, sampled: (sc.traceFlags & 1) === 1 });
      } finally {
        span.end();
      }
    });
  }
  await client.end();
  await provider.shutdown(); // flushes the spans
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
