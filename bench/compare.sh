#!/usr/bin/env bash
# compare.sh — pgbench -S through nothing (direct), PgBouncer (session mode)
# and pgtrace, interleaved within each round, and pgtrace's memory per idle
# connection.
#
# It starts its own PostgreSQL cluster (max_connections raised for the idle
# test), initialises pgbench, configures PgBouncer, builds and starts
# pgtrace, then for each round, protocol (-M simple, prepared) and client
# count (1, 16) runs the three targets back to back (the order rotates each
# round), and prints TPS, average latency, and the ratios pgtrace/direct and
# pgtrace/pgbouncer within each round, then their medians.
#
# Every run starts from fresh PostgreSQL backends: pgbench opens new
# connections for each run, and PgBouncer's server connections from the run
# before are closed (KILL, RESUME on its console) so that it does not hand
# pgbench backends that earlier runs warmed. On the 2-vCPU VMs this was
# written on, a warm backend (its page tables over shared_buffers already
# built) answers pgbench -S about 1.5-2x faster than a fresh one, which made
# PgBouncer look faster than a direct connection; BOUNCER_FRESH=0 keeps
# PgBouncer's pool warm to see that.
#
# Environment: ROUNDS (3), DURATION seconds per run (10), CLIENTS ("1 16"),
# MODES ("simple prepared"), SCALE (pgbench scale, 10), IDLE_CONNS (1000;
# 0 skips the idle-memory measurement of pgtrace), PGTRACE_ARGS (extra serve
# flags), IO_MODES (empty; a list such as "epoll uring goroutines" runs one
# pgtrace per relay mode, each with --io MODE, as targets of their own in
# every round), BOUNCER_FRESH (1), EXPORT (0; 1 exports every span and metric over
# OTLP/gRPC to bench/otlpsink, a receiver that counts and discards; the
# sampling ratio is OTEL_TRACES_SAMPLING_RATIO, 1 unless set), IDLE_FAKE (0; 1
# sends the idle connections to bench/fakepg, a stand-in server, so that
# IDLE_CONNS=10000 does not need 10,000 PostgreSQL backends), PERF (0; 1
# counts each proxy's system calls and context switches per transaction
# with perf stat, and splits its CPU into the busiest thread and the rest),
# STREAM_MB (0; N reads an N-megabyte result through each pgtrace and
# reports its peak memory),
# UPSTREAM_SOCKET (0; 1 has both proxies reach PostgreSQL over its Unix
# socket, as when they run on the database's host; pgbench always uses TCP).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-1 16}"
MODES="${MODES:-simple prepared}"
SCALE="${SCALE:-10}"
IDLE_CONNS="${IDLE_CONNS:-1000}"
PGTRACE_ARGS="${PGTRACE_ARGS:-}"
IO_MODES="${IO_MODES:-}"
IDLE_FAKE="${IDLE_FAKE:-0}"
PERF="${PERF:-0}"
STREAM_MB="${STREAM_MB:-0}"
BOUNCER_FRESH="${BOUNCER_FRESH:-1}"
EXPORT="${EXPORT:-0}"
UPSTREAM_SOCKET="${UPSTREAM_SOCKET:-0}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Servers run under setsid, in a session of their own, as under a service
# manager (PostgreSQL's postmaster makes its own session too). With the
# kernel's autogroup scheduling (sched_autogroup_enabled=1, the default on
# these VMs), a process left in this script's session shares one CPU group
# with pgbench, and the proxies would compete with the load generator
# rather than get a share of their own. setsid execs in place (the
# background child is not a process group leader), so $! stays the
# server's pid.

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

free_port() { # a loopback port nothing listens on
	local p
	while :; do
		p=$((10000 + RANDOM % 20000)) # below the ephemeral ports the idle clients use
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
bindir="$(find_bindir)" || { apt_install postgresql postgresql-contrib; bindir="$(find_bindir)"; }
PGBOUNCER="$(command -v pgbouncer || true)"
[ -n "$PGBOUNCER" ] || [ ! -x /usr/sbin/pgbouncer ] || PGBOUNCER=/usr/sbin/pgbouncer
if [ -z "$PGBOUNCER" ]; then
	apt_install pgbouncer
	PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
fi
PGBENCH="$bindir/pgbench"
[ -x "$PGBENCH" ] || PGBENCH="$(command -v pgbench)"
PSQL="$bindir/psql"
[ -x "$PSQL" ] || PSQL="$(command -v psql)"

work="$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-bench.XXXXXX")"
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
say "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port ($work)"
as_pg "$bindir/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1 ||
	{ cat "$work/initdb.log" >&2; exit 1; }
max_conns=$((IDLE_CONNS + 200))
if [ "$IDLE_FAKE" = 1 ]; then max_conns=300; fi
as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -t 120 \
	-o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=$max_conns -c shared_buffers=128MB -c fsync=off -c synchronous_commit=off" \
	start >/dev/null || { cat "$work/postgres.log" >&2; exit 1; }
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$pg_port" -U postgres postgres >"$work/pgbench-init.log" 2>&1 ||
	{ cat "$work/pgbench-init.log" >&2; exit 1; }

# --- PgBouncer, session mode -------------------------------------------------
# Where the proxies reach PostgreSQL: TCP, or its Unix socket in $work.
bouncer_host=127.0.0.1
pgtrace_upstream="127.0.0.1:$pg_port"
if [ "$UPSTREAM_SOCKET" = 1 ]; then
	bouncer_host="$work"
	pgtrace_upstream="$work/.s.PGSQL.$pg_port"
fi
# start_pgbouncer NAME PORT: sets bouncer_pid (the pgbouncer process).
start_pgbouncer() {
	local name="$1" p="$2" dir="$work/$1"
	mkdir -p "$dir"
	cat >"$dir/pgbouncer.ini" <<INI
[databases]
postgres = host=$bouncer_host port=$pg_port dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $p
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
admin_users = postgres
max_client_conn = $((IDLE_CONNS + 100))
default_pool_size = $((IDLE_CONNS + 50))
max_db_connections = 0
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
	echo '"postgres" ""' >"$dir/userlist.txt"
	if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
	as_pg setsid "$PGBOUNCER" "$dir/pgbouncer.ini" >"$dir/pgbouncer.out" 2>&1 &
	pids+=($!)
	wait_port "$p" || { cat "$dir/pgbouncer.out" "$dir/pgbouncer.log" >&2 2>/dev/null; exit 1; }
	# Under runuser (as root) $! is runuser's; the pid file names pgbouncer.
	bouncer_pid="$(cat "$dir/pgbouncer.pid" 2>/dev/null || echo "${pids[-1]}")"
	# runuser need not pass our TERM on: stop pgbouncer itself at cleanup.
	pids+=("$bouncer_pid")
}
bouncer_port="$(free_port)"
start_pgbouncer bench "$bouncer_port"
say "PgBouncer $("$PGBOUNCER" --version 2>/dev/null | head -1 | awk '{print $2}') (session mode) on 127.0.0.1:$bouncer_port"

# fresh_pgbouncer closes PgBouncer's idle server connections, so that the
# next run gets new backends as the other targets do.
fresh_pgbouncer() {
	"$PSQL" -X -q -h 127.0.0.1 -p "$bouncer_port" -U postgres pgbouncer \
		-c "KILL postgres" -c "RESUME postgres" >/dev/null 2>&1 ||
		{ echo "could not reset PgBouncer's pool via its console" >&2; exit 1; }
}

# --- pgtrace -------------------------------------------------------------------
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
	export OTEL_TRACES_SAMPLING_RATIO="${OTEL_TRACES_SAMPLING_RATIO:-1}"
	say "exporting over OTLP/gRPC to bench/otlpsink at $OTEL_EXPORTER_OTLP_ENDPOINT, sampling ratio $OTEL_TRACES_SAMPLING_RATIO"
fi
# start_pgtrace NAME PORT [FLAGS...]: sets pgtrace_pid.
start_pgtrace() {
	local name="$1" p="$2"
	shift 2
	# shellcheck disable=SC2086 # PGTRACE_ARGS is a list of flags
	setsid "$work/pgtrace" serve --listen "127.0.0.1:$p" --upstream "$pgtrace_upstream" --admin-listen "" \
		--log-level warn --max-client-connections $((IDLE_CONNS + 100)) $PGTRACE_ARGS "$@" 2>"$work/pgtrace-$name.log" &
	pgtrace_pid=$!
	pids+=($!)
	wait_port "$p" || { cat "$work/pgtrace-$name.log" >&2; exit 1; }
}
declare -A port=([direct]=$pg_port [pgbouncer]=$bouncer_port)
declare -A proxy_pid=([pgbouncer]=$bouncer_pid)
declare -A io_flag=()
targets=(direct pgbouncer)
if [ -z "$IO_MODES" ]; then
	p="$(free_port)"
	start_pgtrace bench "$p"
	port[pgtrace]=$p; proxy_pid[pgtrace]=$pgtrace_pid; io_flag[pgtrace]=""
	targets+=(pgtrace)
	say "$("$work/pgtrace" version) on 127.0.0.1:$p"
else
	for m in $IO_MODES; do
		p="$(free_port)"
		start_pgtrace "$m" "$p" --io "$m"
		port[pgtrace-$m]=$p; proxy_pid[pgtrace-$m]=$pgtrace_pid; io_flag[pgtrace-$m]="--io $m"
		targets+=("pgtrace-$m")
		say "$("$work/pgtrace" version) --io $m on 127.0.0.1:$p"
	done
fi
ntargets=${#targets[@]}
tick="$(getconf CLK_TCK)"
# cpu_ticks PID: the user + system CPU time PID has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# thread_ticks PID: "tid ticks" for each thread of PID.
thread_ticks() {
	local f
	for f in /proc/"$1"/task/*/stat; do
		awk '{ sub(/^.*\) /, ""); print FILENAME, $12 + $13 }' "$f" 2>/dev/null
	done | sed 's#/proc/[0-9]*/task/\([0-9]*\)/stat#\1#'
}
if [ "$PERF" = 1 ]; then
	command -v perf >/dev/null || apt_install linux-perf
	: >"$work/perf.tsv"
fi

# --- pgbench rounds ------------------------------------------------------------
results="$work/results.tsv" # round mode clients target tps latency_ms proxy_cpu_us_per_tx
: >"$results"
say "pgbench -S, $ROUNDS round(s) of ${DURATION}s per run; modes: $MODES; clients: $CLIENTS"
for round in $(seq 1 "$ROUNDS"); do
	for mode in $MODES; do
		for c in $CLIENTS; do
			jobs=$((c < 2 ? c : 2))
			# Rotate the order each round so no target always runs first.
			for i in $(seq 0 $((ntargets - 1))); do
				t="${targets[$(((i + round - 1) % ntargets))]}"
				if [ "$t" = pgbouncer ] && [ "$BOUNCER_FRESH" = 1 ]; then fresh_pgbouncer; fi
				pid="${proxy_pid[$t]:-}"
				c0=0; [ -z "$pid" ] || c0="$(cpu_ticks "$pid")"
				perf_pid=""
				if [ "$PERF" = 1 ] && [ -n "$pid" ]; then
					thread_ticks "$pid" >"$work/threads0"
					perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.csv" &
					perf_pid=$!
				fi
				out="$("$PGBENCH" -n -S -M "$mode" -c "$c" -j "$jobs" -T "$DURATION" \
					-h 127.0.0.1 -p "${port[$t]}" -U postgres postgres 2>&1)" || { echo "$out" >&2; exit 1; }
				tps="$(awk '/^tps = /{print $3; exit}' <<<"$out")"
				lat="$(awk '/^latency average = /{print $4; exit}' <<<"$out")"
				txs="$(awk '/^number of transactions actually processed: /{print $NF; exit}' <<<"$out")"
				cpu=0
				if [ -n "$pid" ]; then
					cpu="$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v t="$tick" -v n="$txs" 'BEGIN{printf "%.1f", (b - a) / t * 1e6 / n}')"
				fi
				if [ -n "$perf_pid" ]; then
					kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
					thread_ticks "$pid" >"$work/threads1"
					# syscalls and context switches per transaction; the
					# busiest thread's CPU and the other threads' per transaction.
					awk -F, -v n="$txs" -v t="$tick" -v r="$round" -v m="$mode" -v c="$c" -v tg="$t" '
						FILENAME ~ /perf.csv/ && $3 ~ /sys_enter/ { sc = $1 }
						FILENAME ~ /perf.csv/ && $3 ~ /context-switches/ { cs = $1 }
						FILENAME ~ /threads0/ { split($0, a, " "); t0[a[1]] = a[2] }
						FILENAME ~ /threads1/ { split($0, a, " "); d = a[2] - t0[a[1]]; tot += d; if (d > top) top = d }
						END { printf "%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.1f\t%.1f\n", r, m, c, tg, sc / n, cs / n, top / t * 1e6 / n, (tot - top) / t * 1e6 / n }
					' "$work/perf.csv" "$work/threads0" "$work/threads1" >>"$work/perf.tsv"
				fi
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$c" "$t" "$tps" "$lat" "$cpu" >>"$results"
				printf '  round %s  %-8s  %2s client(s)  %-16s  %10.1f tps  %7.3f ms  %6s us/tx\n' "$round" "$mode" "$c" "$t" "$tps" "$lat" "$cpu" >&2
			done
		done
	done
done

# --- report --------------------------------------------------------------------
echo
echo "pgbench -S, ${DURATION}s per run, scale $SCALE, $(nproc) CPU(s); ratios are taken within each round; PgBouncer pool reset before each run: $BOUNCER_FRESH; OTLP export: $EXPORT$([ "$EXPORT" = 1 ] && echo " (sampling ratio $OTEL_TRACES_SAMPLING_RATIO)"); proxies to PostgreSQL over: $([ "$UPSTREAM_SOCKET" = 1 ] && echo "Unix socket" || echo TCP)"
awk -F'\t' -v proxies="${targets[*]:2}" '
function median(list,   n, a, i, j, t) {
	n = split(list, a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
	k = $2 SUBSEP $3
	tps[$1, k, $4] = $5; lat[$1, k, $4] = $6; cpu[$1, k, $4] = $7
	if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
	if ($1 > rounds) rounds = $1
}
END {
	np = split("pgbouncer " proxies, px, " ")
	printf "%-9s %7s %-16s %5s | %10s %8s | %8s %8s | %9s %9s | %7s %8s\n", "mode", "clients", "target", "round",
		"tps", "lat_ms", "/direct", "/bouncer", "+lat_ms", "", "cpu_us", "cpu/bnc"
	for (i = 1; i <= nk; i++) {
		k = order[i]; split(k, kk, SUBSEP)
		for (q = 1; q <= np; q++) {
			t = px[q]; rd = ""; rb = ""; al = ""; cp = ""; cr = ""
			for (r = 1; r <= rounds; r++) {
				d = tps[r, k, "direct"]; b = tps[r, k, "pgbouncer"]; p = tps[r, k, t]
				ld = lat[r, k, "direct"]; lp = lat[r, k, t]
				c = cpu[r, k, t]; cb = cpu[r, k, "pgbouncer"]
				printf "%-9s %7s %-16s %5s | %10.1f %8.3f | %8.3f %8.3f | %9.3f %9s | %7.1f %8.3f\n",
					kk[1], kk[2], t, r, p, lp, p / d, p / b, lp - ld, "", c, c / cb
				rd = rd " " p / d; rb = rb " " p / b; al = al " " lp - ld; cp = cp " " c; cr = cr " " c / cb
			}
			printf "%-9s %7s %-16s %5s | %10s %8s | %8.3f %8.3f | %9.3f %9s | %7.1f %8.3f\n",
				kk[1], kk[2], t, "median", "", "", median(rd), median(rb), median(al), "", median(cp), median(cr)
		}
	}
	print ""
	print "/direct, /bouncer: TPS over direct and over PgBouncer within the round; +lat_ms: milliseconds the target adds to the average latency of direct;"
	print "cpu_us: CPU microseconds (user + system) the proxy process spent per transaction, the measure least moved by other load; cpu/bnc: that over PgBouncer'"'"'s in the same round"
}' "$results"
if [ "$PERF" = 1 ]; then
	echo
	echo "perf stat and /proc, per transaction (medians of the rounds): syscalls, context switches, CPU us of the busiest thread and of the others"
	awk -F'\t' '
	function median(list,   n, a, i, j, t) {
		n = split(list, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	{ k = $2 SUBSEP $3 SUBSEP $4; if (!(k in seen)) { seen[k] = 1; order[++nk] = k }; sc[k] = sc[k] " " $5; cs[k] = cs[k] " " $6; tt[k] = tt[k] " " $7; ot[k] = ot[k] " " $8 }
	END {
		printf "%-9s %7s %-16s | %9s %9s | %9s %9s\n", "mode", "clients", "target", "syscalls", "ctxsw", "top_thr", "others"
		for (i = 1; i <= nk; i++) { k = order[i]; split(k, kk, SUBSEP)
			printf "%-9s %7s %-16s | %9.2f %9.2f | %9.1f %9.1f\n", kk[1], kk[2], kk[3], median(sc[k]), median(cs[k]), median(tt[k]), median(ot[k]) }
	}' "$work/perf.tsv"
fi

# --- a large result -------------------------------------------------------------
# STREAM_MB megabytes of rows (1,000-byte values) read through each pgtrace
# while its resident set size is sampled: a relay that streams keeps it flat.
if [ "$STREAM_MB" -gt 0 ]; then
	echo
	for t in "${targets[@]:2}"; do
		pid="${proxy_pid[$t]}"
		rss0="$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")"
		peak="$rss0"
		"$PSQL" -X -q -h 127.0.0.1 -p "${port[$t]}" -U postgres postgres \
			-c "copy (select repeat('x', 1000) from generate_series(1, $((STREAM_MB * 1000)))) to stdout" >"$work/stream.out" &
		qpid=$!
		start=$(date +%s.%N)
		while kill -0 "$qpid" 2>/dev/null; do
			r="$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")"
			[ "$r" -gt "$peak" ] && peak="$r"
			sleep 0.2
		done
		wait "$qpid"
		secs="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')"
		bytes="$(stat -c %s "$work/stream.out")"
		rm -f "$work/stream.out"
		printf '%s: %d MB result in %ss; RSS %d KiB before, peak %d KiB during\n' "$t" "$((bytes / 1000000))" "$secs" "$rss0" "$peak"
	done
fi

# --- idle connections ------------------------------------------------------------
# PgBouncer is not measured: it opens server connections one by one and on a
# loaded 2-core machine times 1,000 clients out (query_wait_timeout).
# A fresh process, so that memory the benchmark grew and freed does not hide
# what idle sessions cost.
if [ "$IDLE_CONNS" -gt 0 ]; then
	echo
	say "memory with $IDLE_CONNS idle client connections (fresh pgtrace)"
	go build -o "$work/idleconns" ./bench/idleconns
	# Each proxy's file descriptors: a client socket and an upstream one per
	# connection, twice while a session moves onto a loop, plus room. (Go
	# raises its soft limit to the hard one by itself.)
	need=$((4 * IDLE_CONNS + 1024))
	hard="$(ulimit -Hn)"
	if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
		ulimit -n "$need" 2>/dev/null ||
			echo "note: the hard limit on open files is $hard here; $IDLE_CONNS connections need about $((2 * IDLE_CONNS + 100))" >&2
	fi
	ulimit -Sn "$(ulimit -Hn)"
	if [ "$IDLE_FAKE" = 1 ]; then
		# A stand-in server that logs anyone in: 10,000 PostgreSQL
		# backends do not fit beside the rest on a small machine.
		go build -o "$work/fakepg" ./bench/fakepg
		setsid "$work/fakepg" >"$work/fakepg.addr" 2>"$work/fakepg.log" &
		pids+=($!)
		for _ in $(seq 1 100); do [ -s "$work/fakepg.addr" ] && break; sleep 0.1; done
		pgtrace_upstream="$(cat "$work/fakepg.addr")"
		say "idle connections go to bench/fakepg at $pgtrace_upstream"
	fi
	for m in ${IO_MODES:-""}; do
		p="$(free_port)"
		if [ -n "$m" ]; then start_pgtrace "idle-$m" "$p" --io "$m"; else start_pgtrace idle "$p"; fi
		sleep 1
		"$work/idleconns" -label "pgtrace${m:+ --io $m}" -pid "$pgtrace_pid" -n "$IDLE_CONNS" \
			-dsn "postgres://postgres@127.0.0.1:$p/postgres?sslmode=disable"
		kill -TERM "$pgtrace_pid"
		wait "$pgtrace_pid" 2>/dev/null || true
	done
fi
if [ "$EXPORT" = 1 ]; then
	kill -TERM "$sink_pid"
	wait "$sink_pid" 2>/dev/null || true
	echo
	cat "$work/otlpsink.log"
fi
for f in "$work"/pgtrace-*.log; do
	if grep -q . "$f"; then
		echo
		echo "$(basename "$f") (warnings and errors):"
		tail -n 5 "$f"
	fi
done
