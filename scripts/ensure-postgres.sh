#!/usr/bin/env bash
# ensure-postgres.sh — make sure a PostgreSQL server on PGHOST:PGPORT
# (default 127.0.0.1:5432) can be logged in to, and print its DSN.
#
# A server that already listens there is used only if a real login works
# (psql as PGUSER, with PGPASSWORD when set): a server that merely accepts
# connections, such as Debian's packaged PostgreSQL, which asks for a
# password over TCP, is not enough. When the login fails:
#   - without PGPASSWORD, a throwaway cluster is started on the next free
#     port instead, and a line says so and which variable would use the
#     server that is there;
#   - with PGPASSWORD, the script stops and says what to check: the caller
#     asked for that server.
#
# Nothing listening: a throwaway cluster is started on PGHOST:PGPORT. A
# throwaway cluster lives in a directory under ${TMPDIR:-/tmp} (run as the
# postgres user when run as root: PostgreSQL refuses root), trusts
# connections from loopback, and uses the binaries of `pg_config --bindir`
# or /usr/lib/postgresql/*/bin; PostgreSQL is installed with apt-get when
# there are none.
#
# Environment: PGHOST, PGPORT, PGUSER (postgres), PGPASSWORD (PG_PASSWORD
# is read too), PGDATABASE (postgres), PG_MAX_CONNECTIONS (200, throwaway
# clusters).
#
# Usage:
#   scripts/ensure-postgres.sh          # prints the DSN
#   scripts/ensure-postgres.sh --env    # prints shell assignments: PG_DSN, PG_HOST,
#                                       # PG_PORT, PG_USER, PG_PASSWORD, PG_DB,
#                                       # PG_STARTED_DIR (empty when the server was
#                                       # already running)
#   scripts/ensure-postgres.sh --stop DIR   # stops a cluster this script started
set -euo pipefail

host="${PGHOST:-127.0.0.1}"
port="${PGPORT:-5432}"
user="${PGUSER:-postgres}"
db="${PGDATABASE:-postgres}"
password="${PGPASSWORD:-${PG_PASSWORD:-}}"

say() { printf 'ensure-postgres: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

as_pg() { # run a command as the cluster's owner
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

find_bindir() {
	local d
	if d="$(pg_config --bindir 2>/dev/null)" && [ -x "$d/initdb" ]; then
		echo "$d"
		return 0
	fi
	# Newest version first.
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
		if [ -x "$d/initdb" ]; then
			echo "$d"
			return 0
		fi
	done
	return 1
}

listening() { # listening PORT: is something accepting TCP connections on host:PORT?
	(exec 3<>"/dev/tcp/$host/$1") 2>/dev/null
}

# login PORT PASSWORD: log in as a client would; prints psql's error on
# failure.
login() {
	PGPASSWORD="$2" PGCONNECT_TIMEOUT=5 psql -X -q -A -t -w \
		"host=$host port=$1 user=$user dbname=$db sslmode=prefer application_name=ensure-postgres" \
		-c 'SELECT 1' 2>&1 >/dev/null
}

if [ "${1:-}" = "--stop" ]; then
	dir="${2:?usage: ensure-postgres.sh --stop DIR}"
	bindir="$(find_bindir)"
	as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
	rm -rf "$dir"
	exit 0
fi

install_postgres() {
	say "no PostgreSQL binaries found; installing postgresql with apt-get"
	local sudo=""
	if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql postgresql-client >&2
}

started_dir=""
# start_cluster PORT: a throwaway cluster on host:PORT; returns non-zero
# when the server does not start (the port was taken meanwhile).
start_cluster() {
	local dir
	dir="$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-pg.XXXXXX")"
	if [ "$(id -u)" = 0 ]; then
		id postgres >/dev/null 2>&1 || die "running as root and there is no postgres user to run the server as"
		chown postgres: "$dir"
	fi
	say "starting a throwaway cluster on $host:$1 in $dir ($bindir)"
	as_pg "$bindir/initdb" -D "$dir/data" -U "$user" -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
	if ! as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
		-o "-p $1 -k $dir -c listen_addresses=$host -c max_connections=${PG_MAX_CONNECTIONS:-200} -c fsync=off" \
		start >&2; then
		cat "$dir/postgres.log" >&2
		rm -rf "$dir"
		return 1
	fi
	started_dir="$dir"
	password="" # trust
	say "started; stop it with: $0 --stop $dir"
}

command -v psql >/dev/null || die "psql is needed to check the login: install postgresql-client"

if listening "$port"; then
	if err="$(login "$port" "$password")"; then
		say "a server on $host:$port accepts $user; using it"
	elif [ -n "$password" ]; then
		die "cannot log in to $host:$port as $user: ${err#psql: }
  check PGUSER and PGPASSWORD (and pg_hba.conf on that server), or unset PGPASSWORD to have a throwaway
  cluster started on another port, or set PGPORT to a port where nothing listens"
	else
		bindir="$(find_bindir)" || die "cannot log in to $host:$port as $user (${err#psql: }) and there are no PostgreSQL binaries to start another server:
  set PGPASSWORD (and PGUSER) to use the server on $host:$port"
		say "cannot log in to $host:$port as $user without a password: ${err#psql: }"
		say "to use that server, set PGPASSWORD (and PGUSER); meanwhile a throwaway cluster on another port will do"
		next=$((port + 1))
		started=""
		for _ in 1 2 3 4 5; do
			while listening "$next"; do next=$((next + 1)); done
			if start_cluster "$next"; then
				started=1
				break
			fi
			next=$((next + 1))
		done
		[ -n "$started" ] || die "could not start a throwaway cluster near port $port"
		port="$next"
	fi
else
	if ! bindir="$(find_bindir)"; then
		install_postgres
		bindir="$(find_bindir)"
		# The Debian package may have started its own cluster there.
		if listening "$port"; then
			if login "$port" "$password" >/dev/null; then
				say "the installed package started a server on $host:$port; using it"
				bindir=""
			else
				die "the installed package started a server on $host:$port that asks for a password: run again (it starts a throwaway cluster on another port), or set PGPASSWORD"
			fi
		fi
	fi
	if [ -n "$bindir" ]; then
		start_cluster "$port" || die "could not start a cluster on $host:$port"
	fi
fi

auth="$user"
if [ -n "$password" ]; then
	auth="$user:$(printf %s "$password" | jq -sRr @uri 2>/dev/null || printf %s "$password")"
fi
dsn="postgres://$auth@$host:$port/$db?sslmode=disable"
if [ "${1:-}" = "--env" ]; then
	printf 'PG_DSN=%q\nPG_HOST=%q\nPG_PORT=%q\nPG_USER=%q\nPG_PASSWORD=%q\nPG_DB=%q\nPG_STARTED_DIR=%q\n' \
		"$dsn" "$host" "$port" "$user" "$password" "$db" "$started_dir"
else
	echo "$dsn"
fi
