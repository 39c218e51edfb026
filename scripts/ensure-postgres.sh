#!/usr/bin/env bash
# ensure-postgres.sh — make sure a PostgreSQL server answers on
# PGHOST:PGPORT (default 127.0.0.1:5432) and print its DSN.
#
# If nothing listens there, start a throwaway cluster: initdb into a
# directory under ${TMPDIR:-/tmp} (as the postgres user when run as root:
# PostgreSQL refuses root), trust authentication on loopback, binaries from
# `pg_config --bindir` or /usr/lib/postgresql/*/bin. Installs PostgreSQL with
# apt-get when no binaries exist.
#
# Usage:
#   scripts/ensure-postgres.sh          # prints the DSN
#   scripts/ensure-postgres.sh --env    # prints shell assignments: PG_DSN, PG_HOST,
#                                       # PG_PORT, PG_USER, PG_STARTED_DIR (empty when
#                                       # the server was already running)
#   scripts/ensure-postgres.sh --stop DIR   # stops a cluster this script started
set -euo pipefail

host="${PGHOST:-127.0.0.1}"
port="${PGPORT:-5432}"
user="${PGUSER:-postgres}"
db="${PGDATABASE:-postgres}"

say() { printf 'ensure-postgres: %s\n' "$*" >&2; }

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

listening() { # is something accepting TCP connections on host:port?
	(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

if [ "${1:-}" = "--stop" ]; then
	dir="${2:?usage: ensure-postgres.sh --stop DIR}"
	bindir="$(find_bindir)"
	as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
	rm -rf "$dir"
	exit 0
fi

started_dir=""
if listening; then
	say "a server already listens on $host:$port; using it"
else
	if ! bindir="$(find_bindir)"; then
		say "no PostgreSQL binaries found; installing postgresql with apt-get"
		SUDO=""
		if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
		$SUDO apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql postgresql-client >&2
		bindir="$(find_bindir)"
		# The Debian package may have started its own cluster on 5432.
		if listening; then
			say "the installed package started a server on $host:$port; using it"
			bindir=""
		fi
	fi
	if [ -n "$bindir" ]; then
		started_dir="$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-pg.XXXXXX")"
		if [ "$(id -u)" = 0 ]; then
			if ! id postgres >/dev/null 2>&1; then
				say "running as root and there is no postgres user to run the server as"
				exit 1
			fi
			chown postgres: "$started_dir"
		fi
		say "starting a cluster in $started_dir ($bindir)"
		as_pg "$bindir/initdb" -D "$started_dir/data" -U "$user" -A trust -E UTF8 --locale=C --no-sync >"$started_dir/initdb.log" 2>&1 ||
			{ cat "$started_dir/initdb.log" >&2; exit 1; }
		as_pg "$bindir/pg_ctl" -D "$started_dir/data" -l "$started_dir/postgres.log" -w -t 60 \
			-o "-p $port -k $started_dir -c listen_addresses=$host -c max_connections=${PG_MAX_CONNECTIONS:-200} -c fsync=off" \
			start >&2 || { cat "$started_dir/postgres.log" >&2; exit 1; }
		say "started; stop it with: $0 --stop $started_dir"
	fi
fi

dsn="postgres://$user@$host:$port/$db?sslmode=disable"
if [ "${1:-}" = "--env" ]; then
	printf 'PG_DSN=%q\nPG_HOST=%q\nPG_PORT=%q\nPG_USER=%q\nPG_DB=%q\nPG_STARTED_DIR=%q\n' \
		"$dsn" "$host" "$port" "$user" "$db" "$started_dir"
else
	echo "$dsn"
fi
