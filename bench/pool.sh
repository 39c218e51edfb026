#!/usr/bin/env bash
# pool.sh — pgbench -S through nothing (direct), PgBouncer in transaction
# mode and pgtrace in transaction mode (issue 15), with a new connection per
# transaction (-C, where pooling matters) and with persistent connections,
# interleaved within each round, and the CPU each proxy spends per
# transaction; then, with PROFILE=1, where pgtrace's CPU goes.
#
# It starts its own PostgreSQL cluster (a user "bench" with an md5 password,
# asked for over TCP), initialises pgbench, starts PgBouncer 1.21 or later
# (scripts/ensure-pgbouncer.sh finds or builds one) and pgtrace, both in
# transaction mode with the same pool size and md5 client authentication
# from the same userlist.txt, and pgtrace exporting spans and metrics over
# OTLP/gRPC to bench/otlpsink (a receiver that counts and discards), a
# SAMPLING share of root spans sampled. Each round runs every workload
# (-C or not, each client count) against the three targets back to back,
# the order rotating between rounds; ratios are taken within a round, then
# the median.
#
# Both pools stay warm across runs (pooling is what is measured: their
# server connections outlive pgbench's), and a warm-up run fills them
# first; a direct run gets fresh backends every time (with -C, every
# transaction). A proxy's CPU per transaction is the user + system time of
# its process (/proc/PID/stat) over the run, divided by the transactions
# pgbench counted: the measure least moved by other load on the machine.
#
# PROFILE=1: afterwards, a pgtrace built with net/http/pprof (added with
# go build -overlay, the tree untouched) runs each workload at the first
# client count for PROFILE_SECONDS while a CPU profile is taken; the top
# functions by flat and by cumulative time are printed and the profiles
# kept in PROFILE_DIR.
#
# Environment: ROUNDS (5), DURATION seconds per run (10), CLIENTS ("16 64"),
# WORKLOADS ("connect persistent": -C and not), POOL_SIZE (20), SCALE (10),
# EXPORT (1), SAMPLING (0.10: OTEL_TRACES_SAMPLING_RATIO), PGTRACE_ARGS
# (extra serve flags), PROFILE (0), PROFILE_SECONDS (20), PROFILE_DIR
# (a directory of $TMPDIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-16 64}"
WORKLOADS="${WORKLOADS:-connect persistent}"
POOL_SIZE="${POOL_SIZE:-20}"
SCALE="${SCALE:-10}"
EXPORT="${EXPORT:-1}"
SAMPLING="${SAMPLING:-0.10}"
PGTRACE_ARGS="${PGTRACE_ARGS:-}"
PROFILE="${PROFILE:-0}"
PROFILE_SECONDS="${PROFILE_SECONDS:-20}"
PROFILE_DIR="${PROFILE_DIR:-}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Servers run under setsid, in a session of their own, as under a service
# manager: with the kernel's autogroup scheduling a process left in this
# script's session would share one CPU group with pgbench (see compare.sh).

# find_bindir, apt_install, free_port and wait_port as in compare.sh.
find_bindir() {
	local d
	if d="$(pg_config --bindir 2>/dev/null)" && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
		if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
	done
	return 1
}

apt_install() {
	say "installing $*"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % 20000)) # below the ephemeral ports outgoing connections take
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
}

wait_port() {
	for _ in $(seq 1 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	return 1
}

# --- prerequisites -----------------------------------------------------------
bindir="$(find_bindir)" || { apt_install postgresql postgresql-contrib; bindir="$(find_bindir)"; }
PGBENCH="$bindir/pgbench"
[ -x "$PGBENCH" ] || PGBENCH="$(command -v pgbench)"
PSQL="$bindir/psql"
[ -x "$PSQL" ] || PSQL="$(command -v psql)"
pgbouncer_bin="$(bash scripts/ensure-pgbouncer.sh)"

work="$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-pool-bench.XXXXXX")"
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

# --- PostgreSQL --------------------------------------------------------------
pg_port="$(free_port)"
pg_version="$("$bindir/postgres" --version | awk '{print $3}')"
say "PostgreSQL $pg_version on 127.0.0.1:$pg_port ($work)"
as_pg "$bindir/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1 ||
	{ cat "$work/initdb.log" >&2; exit 1; }
cat >"$work/data/pg_hba.conf" <<'HBA'
local all all                  trust
host  all bench 127.0.0.1/32   md5
host  all all   127.0.0.1/32   trust
HBA
as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -t 120 \
	-o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=128MB -c fsync=off -c synchronous_commit=off" \
	start >/dev/null || { cat "$work/postgres.log" >&2; exit 1; }
"$PSQL" -X -q -h "$work" -p "$pg_port" -U postgres postgres \
	-c "SET password_encryption = 'md5'" -c "CREATE ROLE bench LOGIN SUPERUSER PASSWORD 'secret'" -c "CREATE DATABASE bench OWNER bench"
export PGPASSWORD=secret
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$pg_port" -U bench bench >"$work/pgbench-init.log" 2>&1 ||
	{ cat "$work/pgbench-init.log" >&2; exit 1; }
echo '"bench" "secret"' >"$work/userlist.txt"

# --- PgBouncer, transaction mode ---------------------------------------------------
install -m 0755 "$pgbouncer_bin" "$work/pgbouncer"
bouncer_version="$("$work/pgbouncer" --version | awk 'NR == 1 {print $2}')"
bouncer_port="$(free_port)"
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
max_client_conn = 500
max_prepared_statements = 200
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
if [ "$(id -u)" = 0 ]; then chown postgres: "$work/pgbouncer.ini" "$work/userlist.txt"; fi
as_pg setsid "$work/pgbouncer" "$work/pgbouncer.ini" >"$work/pgbouncer.out" 2>&1 &
pids+=($!)
wait_port "$bouncer_port" || { cat "$work/pgbouncer.out" "$work/pgbouncer.log" >&2 2>/dev/null; exit 1; }
# Under runuser (as root) $! is runuser's; the pid file names pgbouncer.
bouncer_pid="$(cat "$work/pgbouncer.pid")"
pids+=("$bouncer_pid")
say "PgBouncer $bouncer_version (transaction mode, pool size $POOL_SIZE) on 127.0.0.1:$bouncer_port"

# --- pgtrace, transaction mode ---------------------------------------------------------
say "building pgtrace"
go build -o "$work/pgtrace" ./cmd/pgtrace
if [ "$EXPORT" = 1 ]; then
	go build -o "$work/otlpsink" ./bench/otlpsink
	setsid "$work/otlpsink" >"$work/otlpsink.addr" 2>"$work/otlpsink.log" &
	sink_pid=$!
	pids+=($!)
	for _ in $(seq 1 100); do [ -s "$work/otlpsink.addr" ] && break; sleep 0.1; done
	export OTEL_EXPORTER_OTLP_ENDPOINT="http://$(cat "$work/otlpsink.addr")"
	export OTEL_METRIC_EXPORT_INTERVAL=5000
	export OTEL_TRACES_SAMPLING_RATIO="$SAMPLING"
	say "exporting over OTLP/gRPC to bench/otlpsink at $OTEL_EXPORTER_OTLP_ENDPOINT, sampling ratio $SAMPLING"
fi
# start_pgtrace BINARY NAME PORT: sets pgtrace_pid.
start_pgtrace() {
	local bin="$1" name="$2" p="$3"
	# shellcheck disable=SC2086 # PGTRACE_ARGS is a list of flags
	setsid "$bin" serve --listen "127.0.0.1:$p" --upstream "127.0.0.1:$pg_port" --admin-listen "" \
		--pool-mode transaction --pool-size "$POOL_SIZE" --auth-file "$work/userlist.txt" --auth-type md5 \
		--log-level warn $PGTRACE_ARGS 2>"$work/pgtrace-$name.log" &
	pgtrace_pid=$!
	pids+=($!)
	wait_port "$p" || { cat "$work/pgtrace-$name.log" >&2; exit 1; }
}
pgtrace_port="$(free_port)"
start_pgtrace "$work/pgtrace" bench "$pgtrace_port"
pgtrace_version="$("$work/pgtrace" version)"
say "$pgtrace_version (transaction mode, pool size $POOL_SIZE) on 127.0.0.1:$pgtrace_port"

declare -A port=([direct]=$pg_port [pgbouncer]=$bouncer_port [pgtrace]=$pgtrace_port)
declare -A proxy_pid=([pgbouncer]=$bouncer_pid [pgtrace]=$pgtrace_pid)
tick="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
targets=(direct pgbouncer pgtrace)

# run_pgbench PORT WORKLOAD CLIENTS SECONDS: pgbench's output.
run_pgbench() {
	local c="$3" flags=(-n -S -M simple)
	[ "$2" = connect ] && flags+=(-C)
	"$PGBENCH" "${flags[@]}" -c "$c" -j $((c < 2 ? c : 2)) -T "$4" -h 127.0.0.1 -p "$1" -U bench bench 2>&1
}

say "warming up: 5 s of pgbench -S -c 64 per target (fills both pools)"
for t in "${targets[@]}"; do
	run_pgbench "${port[$t]}" persistent 64 5 >/dev/null || { echo "warm-up through $t failed" >&2; exit 1; }
done

# --- rounds ---------------------------------------------------------------------------
results="$work/results.tsv" # round workload clients target tps latency_ms proxy_cpu_us_per_tx load1
: >"$results"
say "pgbench -S, $ROUNDS round(s) of ${DURATION}s per run; workloads: $WORKLOADS; clients: $CLIENTS"
for round in $(seq 1 "$ROUNDS"); do
	for w in $WORKLOADS; do
		for c in $CLIENTS; do
			for i in 0 1 2; do
				t="${targets[$(((i + round - 1) % 3))]}"
				pid="${proxy_pid[$t]:-}"
				load="$(cut -d' ' -f1 /proc/loadavg)"
				c0=0; [ -z "$pid" ] || c0="$(cpu_ticks "$pid")"
				out="$(run_pgbench "${port[$t]}" "$w" "$c" "$DURATION")" || { echo "$out" >&2; exit 1; }
				tps="$(awk '/^tps = /{print $3; exit}' <<<"$out")"
				lat="$(awk '/^latency average = /{print $4; exit}' <<<"$out")"
				txs="$(awk '/^number of transactions actually processed: /{print $NF; exit}' <<<"$out")"
				failed="$(awk '/^number of failed transactions: /{print $5; exit}' <<<"$out")"
				if [ "${failed:-0}" != 0 ]; then echo "$t: $failed failed transactions" >&2; echo "$out" >&2; exit 1; fi
				cpu=0
				if [ -n "$pid" ]; then
					cpu="$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v t="$tick" -v n="$txs" 'BEGIN{printf "%.1f", (b - a) / t * 1e6 / n}')"
				fi
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$c" "$t" "$tps" "$lat" "$cpu" "$load" >>"$results"
				printf '  round %s  %-10s  %2s clients  %-9s  %9.1f tps  %7.3f ms  %6.1f us/tx  load %s\n' \
					"$round" "$w" "$c" "$t" "$tps" "$lat" "$cpu" "$load" >&2
			done
		done
	done
done

# --- report ---------------------------------------------------------------------------
echo
echo "pgbench -S -M simple, ${DURATION}s per run, scale $SCALE, $(nproc) CPU(s), $ROUNDS rounds; PostgreSQL $pg_version, PgBouncer $bouncer_version, $pgtrace_version"
echo "both poolers in transaction mode, pool size $POOL_SIZE, md5 client authentication; OTLP export: $EXPORT (sampling ratio $SAMPLING); connect = pgbench -C (a new connection per transaction)"
awk -F'\t' '
function median(list,   n, a, i, j, t) {
	n = split(list, a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
	k = $2 SUBSEP $3
	tps[$1, k, $4] = $5; cpu[$1, k, $4] = $7; load[$1, k] = load[$1, k] " " $8
	if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
	if ($1 > rounds) rounds = $1
}
END {
	printf "%-10s %7s %6s | %9s %9s %9s | %7s %7s | %7s %7s %7s | %s\n", "workload", "clients", "round",
		"direct", "pgbouncer", "pgtrace", "pgt/dir", "pgt/bnc", "cpu_bnc", "cpu_pgt", "cpu p/b", "load1 at each run"
	for (i = 1; i <= nk; i++) {
		k = order[i]; split(k, kk, SUBSEP)
		rd = ""; rb = ""; cb = ""; cp = ""; cr = ""; td = ""; tb = ""; tp = ""
		for (r = 1; r <= rounds; r++) {
			d = tps[r, k, "direct"]; b = tps[r, k, "pgbouncer"]; p = tps[r, k, "pgtrace"]
			x = cpu[r, k, "pgbouncer"]; y = cpu[r, k, "pgtrace"]
			printf "%-10s %7s %6s | %9.1f %9.1f %9.1f | %7.3f %7.3f | %7.1f %7.1f %7.3f |%s\n",
				kk[1], kk[2], r, d, b, p, p / d, p / b, x, y, y / x, load[r, k]
			rd = rd " " p / d; rb = rb " " p / b; cb = cb " " x; cp = cp " " y; cr = cr " " y / x
			td = td " " d; tb = tb " " b; tp = tp " " p
		}
		printf "%-10s %7s %6s | %9.1f %9.1f %9.1f | %7.3f %7.3f | %7.1f %7.1f %7.3f |\n",
			kk[1], kk[2], "median", median(td), median(tb), median(tp), median(rd), median(rb), median(cb), median(cp), median(cr)
	}
	print ""
	print "pgt/dir, pgt/bnc: pgtrace TPS over direct and PgBouncer TPS within a round; cpu_bnc, cpu_pgt: CPU microseconds (user + system)"
	print "each proxy process spent per transaction; cpu p/b: cpu_pgt / cpu_bnc. Medians are of the per-round figures and ratios."
}' "$results"

# --- profile ------------------------------------------------------------------------------
if [ "$PROFILE" = 1 ]; then
	c="${CLIENTS%% *}"
	pdir="${PROFILE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-pool-profile.XXXXXX")}"
	mkdir -p "$pdir"
	# The same pgtrace with net/http/pprof on PGTRACE_BENCH_PPROF's address,
	# added at build time through an overlay: nothing in the tree changes.
	mkdir -p "$work/overlay"
	cat >"$work/overlay/zz_bench_pprof.go" <<'GO'
package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("PGTRACE_BENCH_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
GO
	printf '{"Replace":{"%s":"%s"}}\n' "$PWD/cmd/pgtrace/zz_bench_pprof.go" "$work/overlay/zz_bench_pprof.go" >"$work/overlay.json"
	go build -overlay "$work/overlay.json" -o "$pdir/pgtrace" ./cmd/pgtrace
	kill -TERM "$pgtrace_pid"
	wait "$pgtrace_pid" 2>/dev/null || true
	pprof_port="$(free_port)"
	p="$(free_port)"
	PGTRACE_BENCH_PPROF="127.0.0.1:$pprof_port" start_pgtrace "$pdir/pgtrace" profile "$p"
	wait_port "$pprof_port"
	run_pgbench "$p" persistent 64 5 >/dev/null
	for w in $WORKLOADS; do
		say "profiling pgtrace: pgbench -S $([ "$w" = connect ] && echo "-C ")-c $c for ${PROFILE_SECONDS}s"
		run_pgbench "$p" "$w" "$c" $((PROFILE_SECONDS + 4)) >"$pdir/pgbench-$w.txt" &
		bench_pid=$!
		sleep 2
		curl -s -o "$pdir/cpu-$w.pprof" "http://127.0.0.1:$pprof_port/debug/pprof/profile?seconds=$PROFILE_SECONDS"
		wait "$bench_pid"
		echo
		echo "pgtrace CPU profile, pgbench -S $([ "$w" = connect ] && echo "-C ")-c $c, $(awk '/^tps = /{print $3; exit}' "$pdir/pgbench-$w.txt") tps:"
		go tool pprof -top -nodecount=25 "$pdir/pgtrace" "$pdir/cpu-$w.pprof" 2>/dev/null | tail -n +4
		echo
		# The shares (cumulative: a function and what it calls) of what the
		# relay does per message, side by side.
		go tool pprof -top -cum -nodecount=100000 "$pdir/pgtrace" "$pdir/cpu-$w.pprof" 2>/dev/null >"$pdir/cum-$w.txt"
		echo "cumulative shares of the profile:"
		for f in 'syscall.write' 'syscall.read' 'internal/runtime/syscall/linux.EpollWait' 'syscall.Accept4' 'runtime.findRunnable' \
			'runtime.futex' 'runtime.gcBgMarkWorker' 'runtime.mallocgc' 'pool.(*relay).login' 'pool.(*Authenticator).Authenticate' \
			'pool.(*relay).handle' 'pool.(*relay).serverLoop' 'pool.(*relay).serverFor' 'pool.setQuery' 'pool.(*Pool).acquire' \
			'pool.(*Pool).release' 'pool.(*msgReader).next' 'bufio.(*Writer).Flush' 'wire.(*PooledSession).ClientMessage' \
			'wire.(*PooledSession).ServerMessage' 'wire.(*Server).dispatch' 'pipeline.(*Pipeline).Observe' \
			'export.(*Exporter).StatementSpan' 'go.opentelemetry.io/otel/sdk/metric.(*float64Inst).Record'; do
			awk -v f="$f" '{n = $6; sub(/^github\.com\/dotmac\/pgtrace\//, "", n)} n == f {printf "  %7s  %s\n", $5, f; found = 1; exit} END {if (!found) printf "  %7s  %s\n", "-", f}' "$pdir/cum-$w.txt"
		done
	done
	echo
	echo "profiles and the binary kept in $pdir (go tool pprof -http=: $pdir/pgtrace $pdir/cpu-persistent.pprof)"
fi

if [ "$EXPORT" = 1 ]; then
	kill -TERM "$sink_pid"
	wait "$sink_pid" 2>/dev/null || true
	echo
	cat "$work/otlpsink.log"
fi
for f in "$work"/pgtrace-*.log; do
	if grep -v '"msg":"slow query"' "$f" | grep -q .; then
		echo
		echo "$(basename "$f") (warnings and errors, slow queries aside):"
		grep -v '"msg":"slow query"' "$f" | head -40
	fi
done
