#!/usr/bin/env bash
# demo_test.sh — scripts/demo.sh on the machine newcomers most often have:
# a PostgreSQL that asks for a password over TCP (Debian's package does)
# already listens where the demo looks. The test starts such a server
# (SCRAM, its own cluster on a free port) and points the demo at it with
# PGPORT, which is what 127.0.0.1:5432 is by default; it needs neither port
# 5432 nor anything else on the machine, so it runs beside other servers.
# Three runs:
#
#   1. no PGPASSWORD: the demo says it cannot log in, names PGPASSWORD,
#      starts a throwaway cluster on another port and runs to the end;
#   2. the right PGPASSWORD: the demo uses that server;
#   3. a wrong PGPASSWORD: the demo stops, naming PGUSER and PGPASSWORD.
#
# Every run must leave nothing behind. The demo's own ports (DEMO_LISTEN,
# DEMO_ADMIN, DEMO_APP) are picked free. Run by .ci/run; by hand:
#
#   bash scripts/demo_test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1mdemo_test: %s\033[0m\n' "$*"; }
failures=0
fail() {
	printf 'demo_test: FAIL: %s\n' "$*" >&2
	failures=$((failures + 1))
}

as_pg() { # PostgreSQL refuses to run as root
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
bindir=""
for d in "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
	if [ -n "$d" ] && [ -x "$d/initdb" ]; then
		bindir="$d"
		break
	fi
done
[ -n "$bindir" ] || { echo "demo_test: no PostgreSQL server binaries (initdb); .ci/run installs them" >&2; exit 1; }
command -v psql >/dev/null || { echo "demo_test: psql is needed; .ci/run installs it" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port NAME sets NAME to a loopback port nothing listens on: below
# the kernel's ephemeral range, where the demo's own outgoing connections
# take their local ports (one of those made pgtrace's bind fail), and not
# one picked before by this script (the demo binds them all later).
picked=" "
pick_port() {
	local low p
	read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
	while :; do
		p=$((10000 + RANDOM % (low - 10000)))
		if [[ $picked != *" $p "* ]] && ! listening "$p"; then
			picked+="$p "
			printf -v "$1" '%s' "$p"
			return
		fi
	done
}

# The password-protected server.
dir="$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-demo-test.XXXXXX")"
password="demo-$RANDOM-secret"
pick_port pgport
cleanup() {
	as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
printf '%s\n' "$password" >"$dir/pwfile"
chmod 600 "$dir/pwfile"
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/pwfile"; fi
say "a PostgreSQL that asks for a password (scram-sha-256) on 127.0.0.1:$pgport"
as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A scram-sha-256 --pwfile="$dir/pwfile" -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 ||
	{ cat "$dir/initdb.log" >&2; exit 1; }
as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
	-o "-p $pgport -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
	{ cat "$dir/postgres.log" >&2; exit 1; }
if PGPASSWORD="" PGCONNECT_TIMEOUT=5 psql -X -w "host=127.0.0.1 port=$pgport user=postgres dbname=postgres" -c 'SELECT 1' >/dev/null 2>&1; then
	echo "demo_test: the test server let a login without a password in; the test would prove nothing" >&2
	exit 1
fi

# run_demo NAME [VAR=value...]: runs the demo against the test server with
# free ports and the given variables; sets out and rc, and checks that the
# run left nothing listening.
out="" rc=0
run_demo() {
	local name="$1"
	shift
	local listen admin app
	pick_port listen
	pick_port admin
	pick_port app
	say "run $name"
	set +e
	out="$(env -u PGPASSWORD -u PG_PASSWORD -u PGDATABASE -u PGSERVICE -u OTEL_EXPORTER_OTLP_ENDPOINT \
		PGHOST=127.0.0.1 PGPORT="$pgport" PGUSER=postgres \
		DEMO_LISTEN="127.0.0.1:$listen" DEMO_ADMIN="127.0.0.1:$admin" DEMO_APP="127.0.0.1:$app" \
		"$@" bash scripts/demo.sh 2>&1)"
	rc=$?
	set -e
	printf '%s\n' "$out" | sed 's/^/    | /'
	for p in "$listen" "$admin" "$app"; do
		if listening "$p"; then fail "$name: port $p still listens after the demo"; fi
	done
}
expect() { # expect NAME TEXT: the last run's output contains TEXT
	if ! grep -qF -- "$2" <<<"$out"; then fail "$1: the output lacks: $2"; fi
}
reject() { # reject NAME REGEX: the last run's output has no line matching REGEX
	if grep -qE -- "$2" <<<"$out"; then fail "$1: the output has: $(grep -E -- "$2" <<<"$out" | head -1)"; fi
}
# The end of a demo that worked: findings, the story metrics, the page.
expect_story() {
	expect "$1" "n_plus_one"
	expect "$1" "slow_query"
	expect "$1" "db_n_plus_one_detected_total{"
	expect "$1" "pgtrace_slow_queries_total{"
	expect "$1" "db_client_connection_count{"
	expect "$1" "db_client_operation_duration_seconds_count{"
	expect "$1" "Admin page: http://"
	reject "$1" '^[a-z_]+\{.*otel_scope_'
	# Empty statements (pgx's "-- ping") are not among the top queries.
	reject "$1" '^[0-9]+ +[0-9.]+ +[0-9.]+ +EMPTY'
}

# 1. No password: a throwaway cluster elsewhere, and the variable named.
run_demo "without PGPASSWORD"
name="without PGPASSWORD"
[ "$rc" = 0 ] || fail "$name: exit $rc, want 0"
expect "$name" "cannot log in to 127.0.0.1:$pgport as postgres without a password"
expect "$name" "to use that server, set PGPASSWORD (and PGUSER)"
expect "$name" "starting a throwaway cluster on 127.0.0.1:"
expect_story "$name"
thrown="$(sed -n 's/.*starting a throwaway cluster on 127\.0\.0\.1:\([0-9]*\).*/\1/p' <<<"$out" | head -1)"
if [ -z "$thrown" ] || [ "$thrown" = "$pgport" ]; then
	fail "$name: the throwaway cluster's port is ${thrown:-unknown}, want another than $pgport"
elif listening "$thrown"; then
	fail "$name: the throwaway cluster on $thrown still runs after the demo"
fi

# 2. The right password: that server is used.
run_demo "with the right PGPASSWORD" PGPASSWORD="$password"
name="with the right PGPASSWORD"
[ "$rc" = 0 ] || fail "$name: exit $rc, want 0"
expect "$name" "a server on 127.0.0.1:$pgport accepts postgres; using it"
reject "$name" "throwaway"
reject "$name" "$password" # the demo does not print the password
expect_story "$name"
# The example service's schema is in the password-protected server.
if ! PGPASSWORD="$password" psql -X -w -At "host=127.0.0.1 port=$pgport user=postgres dbname=postgres" \
	-c "SELECT count(*) FROM pg_tables WHERE tablename = 'partners'" 2>/dev/null | grep -qx 1; then
	fail "$name: no partners table in the server on $pgport"
fi

# 3. A wrong password: stop, and say what to check.
run_demo "with a wrong PGPASSWORD" PGPASSWORD="not-$password"
name="with a wrong PGPASSWORD"
[ "$rc" != 0 ] || fail "$name: exit 0, want a failure"
expect "$name" "cannot log in to 127.0.0.1:$pgport as postgres"
expect "$name" "check PGUSER and PGPASSWORD"
reject "$name" "throwaway cluster on"
reject "$name" "pgtrace ready"
reject "$name" "unbound variable"

# The test server is still there and untouched.
listening "$pgport" || fail "the test server on $pgport is gone"

if [ "$failures" -gt 0 ]; then
	echo "demo_test: $failures failure(s)" >&2
	exit 1
fi
say "PASS"
