#!/usr/bin/env bash
# pgx-suite.sh — pgx's own test suite directly, through PgBouncer in
# transaction mode and through pgtrace in transaction mode, and which tests
# fail through each.
#
# Issue 15 asks that every pgx test that fails through pgtrace's transaction
# pool fail through PgBouncer 1.21+'s too (max_prepared_statements on). The
# script:
#   - starts a throwaway PostgreSQL cluster and sets it up as pgx's CI does
#     (testsetup/postgresql_setup.sql: database pgx_test, hstore, ltree, the
#     uint64 domain, the pgx_md5 user with an md5 password, pg_hba asking it
#     for the password over TCP);
#   - starts PgBouncer (scripts/ensure-pgbouncer.sh finds or builds one of
#     1.21 or later) and pgtrace, both in transaction mode with the same pool
#     size, md5 authentication of clients from the same userlist.txt, and
#     200 prepared statements per server connection;
#   - copies the pgx module the project uses out of the Go module cache (it is
#     read-only there) and runs `go test -json` of its packages that talk to a
#     server, once per target, PGX_TEST_DATABASE (and the TCP, md5 and
#     PgBouncer connection strings pgx's tests read) pointing at that target;
#   - prints, with bench/suitediff, pass/fail/skip per target and the tests
#     that fail through pgtrace and not through PgBouncer (there must be none)
#     and the reverse.
#
# Usage: scripts/pgx-suite.sh [-run REGEXP]   (extra arguments go to go test)
#
# Environment: TARGETS ("direct pgbouncer pgtrace"; their order is the run
# order), PACKAGES (". ./pgconn ./pgxpool ./stdlib ./pgtype ./pgtype/zeronull
# ./tracelog"), POOL_SIZE (20: server connections per pool in both poolers),
# TEST_TIMEOUT (4m: go test's -timeout for one package; the direct run of
# the slowest takes under a minute), RERUNS (3: how many times the tests
# whose outcomes differ between the poolers run again, alone, on fresh
# pools), OUT (a file to write the Markdown report
# to, besides standard output), KEEP_DIR (a directory to copy each target's
# go test -json stream and the proxies' logs to), PGTRACE_ARGS (extra serve
# flags).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"

TARGETS="${TARGETS:-direct pgbouncer pgtrace}"
PACKAGES="${PACKAGES:-. ./pgconn ./pgxpool ./stdlib ./pgtype ./pgtype/zeronull ./tracelog}"
POOL_SIZE="${POOL_SIZE:-20}"
TEST_TIMEOUT="${TEST_TIMEOUT:-4m}"
RERUNS="${RERUNS:-3}"
OUT="${OUT:-}"
KEEP_DIR="${KEEP_DIR:-}"
PGTRACE_ARGS="${PGTRACE_ARGS:-}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

find_bindir() {
	local d
	if d="$(pg_config --bindir 2>/dev/null)" && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
		if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
	done
	return 1
}

free_port() { # a loopback port nothing listens on
	local p
	while :; do
		p=$((10000 + RANDOM % 20000)) # below the ephemeral ports outgoing connections take
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
}

wait_port() { # wait until something accepts on 127.0.0.1:$1
	for _ in $(seq 1 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	return 1
}

# --- prerequisites -----------------------------------------------------------
if ! bindir="$(find_bindir)"; then
	say "installing PostgreSQL"
	SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >&2
	bindir="$(find_bindir)"
fi
PSQL="$bindir/psql"
[ -x "$PSQL" ] || PSQL="$(command -v psql)"
pgbouncer_bin="$(bash scripts/ensure-pgbouncer.sh)"

pgx_version="$(go list -m -f '{{.Version}}' github.com/jackc/pgx/v5)"
pgx_src="$(go mod download -json "github.com/jackc/pgx/v5@$pgx_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$pgx_src" ] || { echo "cannot find pgx $pgx_version in the module cache" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/pgx-suite.XXXXXX")"
pids=()
cleanup() {
	set +e
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
	if [ -f "$work/data/postmaster.pid" ]; then as_pg "$bindir/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1; fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$(id -u)" = 0 ]; then chown postgres: "$work"; fi

say "copying pgx $pgx_version's module to $work/pgx"
cp -r "$pgx_src" "$work/pgx"
chmod -R u+w "$work/pgx"

# --- PostgreSQL, set up as pgx's CI does ---------------------------------------
pg_port="$(free_port)"
pg_version="$("$bindir/postgres" --version | awk '{print $3}')"
say "PostgreSQL $pg_version on 127.0.0.1:$pg_port"
as_pg "$bindir/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1 ||
	{ cat "$work/initdb.log" >&2; exit 1; }
# pgx's testsetup/pg_hba.conf without the TLS users; everyone else trusted.
cat >"$work/data/pg_hba.conf" <<'HBA'
local all all                        trust
host  all pgx_md5   127.0.0.1/32     md5
host  all pgx_scram 127.0.0.1/32     scram-sha-256
host  all pgx_pw    127.0.0.1/32     password
host  all all       127.0.0.1/32     trust
HBA
as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -t 120 \
	-o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off" \
	start >/dev/null || { cat "$work/postgres.log" >&2; exit 1; }
"$PSQL" -X -q -h "$work" -p "$pg_port" -U postgres -c 'CREATE DATABASE pgx_test' postgres
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$pg_port" -U postgres -f "$work/pgx/testsetup/postgresql_setup.sql" pgx_test >"$work/setup.log" 2>&1 ||
	{ cat "$work/setup.log" >&2; exit 1; }

# One userlist.txt for both poolers, as pgx's CI gives PgBouncer: a plain
# password, so both ask clients for md5 and log in to the server with it.
echo '"pgx_md5" "secret"' >"$work/userlist.txt"
if [ "$(id -u)" = 0 ]; then chown postgres: "$work/userlist.txt"; fi

# --- PgBouncer, transaction mode -------------------------------------------------
bouncer_port="$(free_port)"
install -m 0755 "$pgbouncer_bin" "$work/pgbouncer"
bouncer_version="$("$work/pgbouncer" --version | awk 'NR == 1 {print $2}')"
cat >"$work/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = md5
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
max_prepared_statements = 200
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
if [ "$(id -u)" = 0 ]; then chown postgres: "$work/pgbouncer.ini"; fi
# start_pgbouncer, stop_pgbouncer: a fresh PgBouncer, whose pool has no
# server connection yet.
start_pgbouncer() {
	as_pg setsid "$work/pgbouncer" "$work/pgbouncer.ini" >>"$work/pgbouncer.out" 2>&1 &
	pids+=($!)
	wait_port "$bouncer_port" || { cat "$work/pgbouncer.out" "$work/pgbouncer.log" >&2 2>/dev/null; exit 1; }
	# Under runuser (as root) $! is runuser's; the pid file names pgbouncer.
	bouncer_pid="$(cat "$work/pgbouncer.pid")"
	pids+=("$bouncer_pid")
}
stop_pgbouncer() {
	kill -TERM "$bouncer_pid" 2>/dev/null || true
	for _ in $(seq 1 100); do kill -0 "$bouncer_pid" 2>/dev/null || return 0; sleep 0.1; done
	echo "PgBouncer ($bouncer_pid) did not stop" >&2
	exit 1
}
start_pgbouncer
say "PgBouncer $bouncer_version (transaction mode, max_prepared_statements 200, pool size $POOL_SIZE) on 127.0.0.1:$bouncer_port"

# --- pgtrace, transaction mode -----------------------------------------------------
say "building pgtrace"
go build -o "$work/pgtrace-bin" ./cmd/pgtrace
go build -o "$work/suitediff" ./bench/suitediff
pgtrace_port="$(free_port)"
# start_pgtrace, stop_pgtrace: a fresh pgtrace, whose pool has no server
# connection yet.
start_pgtrace() {
	# shellcheck disable=SC2086 # PGTRACE_ARGS is a list of flags
	setsid "$work/pgtrace-bin" serve --listen "127.0.0.1:$pgtrace_port" --upstream "127.0.0.1:$pg_port" --admin-listen "" \
		--pool-mode transaction --pool-size "$POOL_SIZE" --auth-file "$work/userlist.txt" --auth-type md5 \
		--max-prepared-statements 200 --log-level warn $PGTRACE_ARGS 2>>"$work/pgtrace.log" &
	pgtrace_pid=$!
	pids+=($!)
	wait_port "$pgtrace_port" || { cat "$work/pgtrace.log" >&2; exit 1; }
}
stop_pgtrace() {
	kill -TERM "$pgtrace_pid" 2>/dev/null || true
	wait "$pgtrace_pid" 2>/dev/null || true
}
start_pgtrace
pgtrace_version="$("$work/pgtrace-bin" version)"
say "$pgtrace_version (transaction mode, pool size $POOL_SIZE) on 127.0.0.1:$pgtrace_port"

declare -A port=([direct]=$pg_port [pgbouncer]=$bouncer_port [pgtrace]=$pgtrace_port)

# --- the suite, once per target -------------------------------------------------------
say "downloading pgx's test dependencies"
(cd "$work/pgx" && GOWORK=off GOFLAGS=-mod=mod go mod download)
# shellcheck disable=SC2206 # PACKAGES is a list
pkgs=($PACKAGES)
started="$(date -u +%Y-%m-%dT%H:%MZ)"
declare -A took hung_tests

# go_test TARGET PACKAGE OUT [go test flags...]: go test -json of one
# package with PGX_TEST_DATABASE at TARGET, appended to OUT.
#
# A test that hangs (LISTEN through a transaction pool waits for a
# notification forever) would take the rest of its package with it at the
# timeout: the package runs again without the tests the timeout caught
# running, which stay failed (never ended).
go_test() {
	local t="$1" pkg="$2" out="$3" skip="" hung attempt dsn
	shift 3
	dsn="host=127.0.0.1 port=${port[$t]:?unknown target $t} user=pgx_md5 password=secret dbname=pgx_test"
	for attempt in 1 2 3 4 5 6; do
		(
			cd "$work/pgx"
			export GOWORK=off GOFLAGS=-mod=mod
			export PGX_TEST_DATABASE="$dsn" PGX_TEST_TCP_CONN_STRING="$dsn" PGX_TEST_MD5_PASSWORD_CONN_STRING="$dsn"
			export PGX_TEST_PGBOUNCER_CONN_STRING="$dsn"
			unset PGX_TEST_UNIX_SOCKET_CONN_STRING PGX_TEST_SCRAM_PASSWORD_CONN_STRING PGX_TEST_PLAIN_PASSWORD_CONN_STRING \
				PGX_TEST_TLS_CONN_STRING PGX_TEST_TLS_CLIENT_CONN_STRING PGX_TEST_SCRAM_PLUS_CONN_STRING PGX_TEST_OAUTH
			go test -count=1 -json -timeout "$TEST_TIMEOUT" ${skip:+-skip "$skip"} "$pkg" "$@" </dev/null >"$work/attempt.json" 2>>"$work/$t.stderr" || true
		)
		cat "$work/attempt.json" >>"$out"
		hung="$("$work/suitediff" -hung "$work/attempt.json" | paste -sd'|' -)"
		[ -n "$hung" ] || return 0
		echo "  $pkg through $t: the timeout caught $hung running; again without" >&2
		hung_tests[$t]="${hung_tests[$t]:-}${hung_tests[$t]:+ }$pkg:${hung//|/,}"
		skip="${skip:+$skip|}^($hung)\$"
	done
}

for t in $TARGETS; do
	say "go test ${pkgs[*]} with PGX_TEST_DATABASE at $t (127.0.0.1:${port[$t]:?unknown target $t})"
	s=$SECONDS
	: >"$work/$t.json"
	for pkg in "${pkgs[@]}"; do go_test "$t" "$pkg" "$work/$t.json" "$@"; done
	took[$t]=$((SECONDS - s))
	grep -h '"Action":"fail","Package":"[^"]*","Elapsed' "$work/$t.json" >&2 || true
done

# --- the tests whose outcomes differ, again, on fresh pools ---------------------------
# Which test meets a server connection with another test's temporary table
# or session setting on it depends on the order and timing of the whole
# run; a test whose outcome differs between the poolers runs again, RERUNS
# times through each, alone with the others that differ, each time on
# freshly started poolers.
rerun_args=()
if [ "$RERUNS" -gt 0 ] && [[ " $TARGETS " == *" pgtrace "* && " $TARGETS " == *" pgbouncer "* ]]; then
	"$work/suitediff" -diff-tests -base pgtrace -ref pgbouncer "pgtrace=$work/pgtrace.json" "pgbouncer=$work/pgbouncer.json" >"$work/differ.tsv"
	if [ -s "$work/differ.tsv" ]; then
		say "running the $(wc -l <"$work/differ.tsv") test(s) whose outcomes differ again, $RERUNS time(s) through each pooler"
		for i in $(seq 1 "$RERUNS"); do
			stop_pgbouncer; start_pgbouncer
			stop_pgtrace; start_pgtrace
			for t in pgtrace pgbouncer; do
				: >"$work/rerun-$t-$i.json"
				while read -r pkg; do
					re="^($(awk -F'\t' -v p="$pkg" '$1 == p {print $2}' "$work/differ.tsv" | paste -sd'|' -))\$"
					rel=".${pkg#github.com/jackc/pgx/v5}" # ".", "./pgconn"
					go_test "$t" "$rel" "$work/rerun-$t-$i.json" -run "$re"
				done < <(cut -f1 "$work/differ.tsv" | sort -u)
				rerun_args+=("$t=$work/rerun-$t-$i.json")
			done
		done
	fi
fi

# --- report -----------------------------------------------------------------------------
args=()
for t in $TARGETS; do args+=("$t=$work/$t.json"); done
{
	echo "Run $started on $(nproc) CPU(s), load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)."
	echo "pgx $pgx_version, packages: ${pkgs[*]}; PostgreSQL $pg_version; PgBouncer $bouncer_version; $pgtrace_version; $(go version | awk '{print $3}')."
	echo "Both poolers: transaction mode, pool size $POOL_SIZE, md5 client authentication from one userlist.txt, 200 prepared statements per server connection."
	printf 'Seconds per target:'
	for t in $TARGETS; do printf ' %s %s' "$t" "${took[$t]}"; done
	echo
	for t in $TARGETS; do
		if [ -n "${hung_tests[$t]:-}" ]; then
			echo "Hung through $t until go test's -timeout $TEST_TIMEOUT (counted as failed; their package run again without them): ${hung_tests[$t]}."
		fi
	done
	echo
	"$work/suitediff" -base pgtrace -ref pgbouncer "${args[@]}"
	if [ "${#rerun_args[@]}" -gt 0 ]; then
		echo
		echo "### The tests whose outcomes differ, run again alone on fresh pools ($RERUNS times through each pooler)"
		echo
		"$work/suitediff" -tally "${rerun_args[@]}"
	fi
} >"$work/report.md"
cat "$work/report.md"
if [ -n "$OUT" ]; then cp "$work/report.md" "$OUT"; fi
if [ -n "$KEEP_DIR" ]; then
	mkdir -p "$KEEP_DIR"
	cp "$work"/*.json "$work"/*.stderr "$work"/*.tsv "$work/pgtrace.log" "$work/pgbouncer.log" "$work/postgres.log" "$KEEP_DIR"/ 2>/dev/null || true
fi
# Slow-query findings are the tests' own doing (pg_sleep); the rest may say
# what the relay met.
if grep -v '"msg":"slow query"' "$work/pgtrace.log" | grep -q .; then
	echo
	echo "pgtrace's warnings and errors, slow queries aside (first 40 lines):"
	grep -v '"msg":"slow query"' "$work/pgtrace.log" | head -40
fi
