#!/usr/bin/env bash
# demo.sh — pgtrace end to end on this machine: build pgtrace and the example
# service, make sure a PostgreSQL runs (starting a throwaway one if none
# does), put pgtrace in front of it, point the example service's DSN at
# pgtrace, drive a short workload that includes a deliberate N+1, and print
# the top queries and findings pgtrace made of it. Everything it started is
# stopped on exit.
#
# Environment (all optional):
#   PGHOST, PGPORT      the PostgreSQL to use, default 127.0.0.1:5432. A server
#                       there is used when PGUSER can log in; otherwise a
#                       throwaway cluster is started on the next free port
#                       (scripts/ensure-postgres.sh says which).
#   PGUSER, PGPASSWORD  the login for that server (default postgres, no
#                       password). With PGPASSWORD set, a failed login stops
#                       the demo instead.
#   PGDATABASE          default postgres.
#   DEMO_LISTEN         pgtrace's address, default 127.0.0.1:6432.
#   DEMO_ADMIN          pgtrace's admin server, default 127.0.0.1:9187.
#   DEMO_APP            the example service, default 127.0.0.1:8080.
#   DEMO_KEEP=1         keep everything running until Ctrl-C.
#   OTEL_*              send traces and metrics to a collector, e.g.
#                       OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 (with
#                       OTEL_METRICS_EXPORTER=none for Jaeger, which takes
#                       traces only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

listen="${DEMO_LISTEN:-127.0.0.1:6432}"
admin="${DEMO_ADMIN:-127.0.0.1:9187}"
app="${DEMO_APP:-127.0.0.1:8080}"
work="$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-demo.XXXXXX")"
pgtrace_pid=""
app_pid=""
PG_STARTED_DIR=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

stop_pid() {
	if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
		kill -TERM "$1"
		wait "$1" 2>/dev/null
	fi
}
cleanup() {
	set +e
	stop_pid "$app_pid"
	stop_pid "$pgtrace_pid"
	if [ -n "$PG_STARTED_DIR" ]; then
		scripts/ensure-postgres.sh --stop "$PG_STARTED_DIR" 2>/dev/null
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_log FILE PATTERN PID: wait until FILE has PATTERN, or fail if PID died.
wait_log() {
	for _ in $(seq 1 300); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		kill -0 "$3" 2>/dev/null || { cat "$1" >&2; return 1; }
		sleep 0.1
	done
	echo "timed out waiting for $2 in $1" >&2
	cat "$1" >&2
	return 1
}

missing=()
command -v psql >/dev/null || missing+=(postgresql-client)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
	step "installing ${missing[*]}"
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

step "building pgtrace and the example service (the first build compiles pg_query: about a minute)"
go build -o "$work/pgtrace" ./cmd/pgtrace
go build -o "$work/partners" ./examples/partners
"$work/pgtrace" version

step "making sure PostgreSQL runs"
# It says what to set when it cannot log in; a failure inside $(…) would
# not stop the script, hence the explicit exit.
pg_env="$(scripts/ensure-postgres.sh --env)" || exit 1
eval "$pg_env"
echo "PostgreSQL: $(sed -E 's#(://[^:/@]+):[^@]*@#\1:****@#' <<<"$PG_DSN")" # without the password

step "starting pgtrace: $listen -> $PG_HOST:$PG_PORT (admin on $admin)"
"$work/pgtrace" serve --listen "$listen" --upstream "$PG_HOST:$PG_PORT" --admin-listen "$admin" \
	--log-format text 2>"$work/pgtrace.log" &
pgtrace_pid=$!
wait_log "$work/pgtrace.log" 'msg="pgtrace ready"' "$pgtrace_pid"
grep 'msg="pgtrace ready"' "$work/pgtrace.log"

# The example service's DSN names pgtrace, not PostgreSQL: the one change a
# user makes.
pw=""
if [ -n "$PG_PASSWORD" ]; then pw=":$(printf %s "$PG_PASSWORD" | jq -sRr @uri)"; fi
proxy_dsn="postgres://$PG_USER$pw@$listen/$PG_DB?sslmode=disable&application_name=partners"
step "starting the example service on $app with PARTNERS_DSN pointing at pgtrace"
PARTNERS_DSN="$proxy_dsn" PARTNERS_ADDR="$app" OTEL_SERVICE_NAME="${OTEL_SERVICE_NAME:-partners}" \
	"$work/partners" >"$work/partners.log" 2>&1 &
app_pid=$!
wait_log "$work/partners.log" '"msg":"listening"' "$app_pid"

step "workload: the joined report, the N+1 report, one partner, a missing tenant, a slow query"
hdr=(-H "x-tenant-id: acme" -H "content-type: application/json")
for _ in 1 2 3; do
	curl -fsS "${hdr[@]}" "http://$app/partners/report" >/dev/null
	curl -fsS "${hdr[@]}" "http://$app/partners/report-n-plus-one" >/dev/null
done
curl -fsS "${hdr[@]}" "http://$app/partners/1" | jq -c .
printf 'without a tenant: HTTP %s\n' "$(curl -s -o /dev/null -w '%{http_code}' "http://$app/partners/report")"
psql "$proxy_dsn" -qAt -c "SELECT pg_sleep(0.15) /*application='demo-psql'*/" >/dev/null
echo "done"
sleep 1.5 # let the pipeline and the detector's ticker catch up

step "top queries by total time (GET http://$admin/api/queries)"
queries="$(curl -fsS "http://$admin/api/queries?sort=total&limit=8")"
jq -r '.queries[] | [(.calls|tostring), (.total_ms|.*100|round/100|tostring), (.p95_ms|.*100|round/100|tostring), .summary, (.query|.[0:70])] | @tsv' <<<"$queries" |
	(printf 'calls\ttotal_ms\tp95_ms\tsummary\tquery\n'; cat) | column -t -s $'\t'

step "findings (GET http://$admin/api/findings)"
curl -fsS "http://$admin/api/findings" |
	jq -r '.findings[] | "\(.type)\tcount=\(.count)\ttotal=\(.total_duration_ms|.*100|round/100)ms\tapp=\(.application)\t\(.query|.[0:60])"' | column -t -s $'\t'

step "the metrics that tell the story (GET http://$admin/metrics; otel_scope_* labels left out)"
# The findings, the connections, and the top query's latency: the same
# series a dashboard or an alert reads. awk reads all of its input ("| head"
# would kill the writer with SIGPIPE, which pipefail turns into a failure).
metrics="$(curl -fsS "http://$admin/metrics")"
top="$(jq -r '.queries[0].summary // ""' <<<"$queries")"
awk -v top="db_query_summary=\"$top\"" '
	/^# / { next }
	/^(db_n_plus_one_detected_total|pgtrace_slow_queries_total|db_client_connection_count|pgtrace_connections_opened_total)\{/ ||
	(/^db_client_operation_duration_seconds_(count|sum)\{/ && index($0, top)) {
		gsub(/,?otel_scope_[a-z_]+="[^"]*"/, ""); sub(/\{,/, "{"); print
	}' <<<"$metrics"

echo
echo "Admin page: http://$admin/   (API: /api/queries /api/findings /api/connections; metrics: /metrics)"
if [ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
	echo "Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://localhost:4317) to send spans to a collector, SigNoz or Jaeger."
fi
if [ "${DEMO_KEEP:-}" = 1 ]; then
	echo "Everything keeps running (pgtrace on $listen, the service on $app); press Ctrl-C to stop."
	wait "$pgtrace_pid"
fi
