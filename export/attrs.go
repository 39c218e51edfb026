package export

import (
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Attribute keys. The stable database conventions come first, then the
// legacy keys SigNoz's "DB calls" views still read (DESIGN.md decision 6),
// then pgtrace's own.
const (
	keyDBSystemName       = attribute.Key("db.system.name")
	keyDBNamespace        = attribute.Key("db.namespace")
	keyDBQueryText        = attribute.Key("db.query.text")
	keyDBQuerySummary     = attribute.Key("db.query.summary")
	keyDBOperationName    = attribute.Key("db.operation.name")
	keyDBCollectionName   = attribute.Key("db.collection.name")
	keyDBStatusCode       = attribute.Key("db.response.status_code")
	keyDBReturnedRows     = attribute.Key("db.response.returned_rows")
	keyErrorType          = attribute.Key("error.type")
	keyServerAddress      = attribute.Key("server.address")
	keyServerPort         = attribute.Key("server.port")
	keyClientAddress      = attribute.Key("client.address") // the application's side of the connection
	keyClientPort         = attribute.Key("client.port")
	keyConnState          = attribute.Key("db.client.connection.state")
	keyConnPoolName       = attribute.Key("db.client.connection.pool.name")
	keyTenantID           = attribute.Key("tenant.id") // as the companion package observe names it
	keyLegacyDBSystem     = attribute.Key("db.system")
	keyLegacyDBName       = attribute.Key("db.name")
	keyLegacyDBStatement  = attribute.Key("db.statement")
	keyLegacyDBOperation  = attribute.Key("db.operation")
	keyLegacyDBUser       = attribute.Key("db.user")
	keyFingerprint        = attribute.Key("pgtrace.fingerprint")
	keyApplication        = attribute.Key("pgtrace.application")
	keyRoute              = attribute.Key("pgtrace.route")
	keyController         = attribute.Key("pgtrace.controller")
	keyAction             = attribute.Key("pgtrace.action")
	keyFramework          = attribute.Key("pgtrace.framework")
	keyConnectionID       = attribute.Key("pgtrace.connection.id")
	keyBackendPID         = attribute.Key("pgtrace.backend.pid")
	keySlow               = attribute.Key("pgtrace.slow")
	keyNPlusOne           = attribute.Key("pgtrace.n_plus_one")
	keyNPlusOneCount      = attribute.Key("pgtrace.n_plus_one.count")
	keyFetches            = attribute.Key("pgtrace.fetches") // Executes of a portal fetched in parts
	keyParentSampled      = attribute.Key("pgtrace.parent.sampled")
	keyPeerService        = attribute.Key("peer.service")
	keySlowThresholdMs    = attribute.Key("pgtrace.slow_threshold_ms")
	keyDurationMs         = attribute.Key("pgtrace.duration_ms")
	keyKeep               = attribute.Key("pgtrace.keep") // see keepSampler
	keyTxOutcome          = attribute.Key("pgtrace.transaction.outcome")
	keyTxStatements       = attribute.Key("pgtrace.transaction.statements")
	keyAuthOutcome        = attribute.Key("pgtrace.auth.outcome")
	keyFindingType        = attribute.Key("pgtrace.finding.type")
	keyParseError         = attribute.Key("pgtrace.parse_error")
	keyStatementTruncated = attribute.Key("pgtrace.statement.truncated")
	keyPoolWaitMs         = attribute.Key("pgtrace.pool.wait_ms") // how long the client waited for a server connection (pooled modes)
)

const systemPostgreSQL = "postgresql"

var (
	attrSystem       = keyDBSystemName.String(systemPostgreSQL)
	attrLegacySystem = keyLegacyDBSystem.String(systemPostgreSQL)
	attrPeerService  = keyPeerService.String(systemPostgreSQL)
	// attrParentUnsampled marks a span kept although its parent was not
	// sampled.
	attrParentUnsampled = keyParentSampled.Bool(false)
)

// metricAttrs is the measurement option for a metric's attribute set, with
// every string value made valid UTF-8 (bad bytes become U+FFFD).
//
// Values such as the database name, the query summary and collection, the
// tenant and the application come from what clients send, which in a
// SQL_ASCII database, or in a query PostgreSQL then rejects, need not be
// UTF-8. The Prometheus client refuses such a label value and fails the
// whole /metrics scrape (HTTP 500), for as long as the cumulative series
// lives, and an OTLP exporter fails its whole request. kvs may be changed.
func metricAttrs(kvs ...attribute.KeyValue) metric.MeasurementOption {
	for i, kv := range kvs {
		if kv.Value.Type() == attribute.STRING {
			if s := kv.Value.AsString(); !utf8.ValidString(s) {
				kvs[i].Value = attribute.StringValue(mendUTF8(s))
			}
		}
	}
	return metric.WithAttributeSet(attribute.NewSet(kvs...))
}

// mendUTF8 returns s with U+FFFD in place of each run of bytes that is not
// UTF-8: what pgtrace sends for such a string in a metric label or a span.
func mendUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
