#!/usr/bin/env bash
# ensure-pgbouncer.sh — print the path of a PgBouncer binary at least
# PGBOUNCER_MIN (1.21, the first with max_prepared_statements: protocol-level
# prepared statements in transaction mode), building one when none is there.
#
# Looked for, in order: $PGBOUNCER; `pgbouncer` on PATH or /usr/sbin/pgbouncer
# (the distribution's package); a build this script left in the cache
# directory. When none is new enough (Debian 12 ships 1.18), it builds the
# source package of the newest Debian release that has one
# (PGBOUNCER_SRC_SUITE, default trixie: 1.24) with apt-get source, from the
# same archive the machine's apt already uses, under a private apt state
# (the machine's sources and lists are not changed), and installs the build
# dependencies it lacks with apt-get. The build takes about a minute.
#
# Environment: PGBOUNCER, PGBOUNCER_MIN (1.21), PGBOUNCER_SRC_SUITE (trixie),
# PGTRACE_CACHE (${XDG_CACHE_HOME:-$HOME/.cache}/pgtrace).
#
# The binary may lie under root's home: PgBouncer refuses to run as root,
# so a caller that runs it as another user copies it somewhere that user
# can read.
set -euo pipefail

min="${PGBOUNCER_MIN:-1.21}"
suite="${PGBOUNCER_SRC_SUITE:-trixie}"
cache="${PGTRACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgtrace}/pgbouncer"

say() { printf 'ensure-pgbouncer: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

version_of() { "$1" --version 2>/dev/null | awk 'NR == 1 {print $2}'; }
# new_enough BINARY: its version is at least $min.
new_enough() {
	local v
	[ -x "$1" ] || return 1
	v="$(version_of "$1")"
	[ -n "$v" ] && [ "$(printf '%s\n%s\n' "$min" "$v" | sort -V | head -1)" = "$min" ]
}

for b in "${PGBOUNCER:-}" "$(command -v pgbouncer || true)" /usr/sbin/pgbouncer "$cache/bin/pgbouncer"; do
	if [ -n "$b" ] && new_enough "$b"; then
		echo "$b"
		exit 0
	fi
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
have="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
if [ -x "$have" ]; then
	say "PgBouncer $(version_of "$have") at $have is older than $min; building PgBouncer from Debian $suite's source package into $cache"
else
	say "no PgBouncer found; building one from Debian $suite's source package into $cache"
fi

# Build dependencies (TLS, libevent, c-ares for DNS), only those missing.
pkgs=()
for p in gcc make pkg-config libc6-dev libssl-dev libevent-dev libc-ares-dev; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || pkgs+=("$p")
done
if [ "${#pkgs[@]}" -gt 0 ]; then
	say "installing ${pkgs[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
fi

# The archive the machine's apt uses (deb822 .sources or sources.list),
# security archives aside.
archive="$(
	{
		grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}' || true
		grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' || true
	} 2>/dev/null | grep -v -- '-security' | head -1 || true
)"
[ -n "$archive" ] || die "found no Debian archive in /etc/apt's sources to get PgBouncer's source package from"

work="$(mktemp -d "${TMPDIR:-/tmp}/pgbouncer-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src $archive $suite main" >"$work/sources.list"
apt_private=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none"
	-o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Acquire::Languages=none")
# Root's apt drops to _apt for downloads, which cannot write in $work.
if [ "$(id -u)" = 0 ]; then apt_private+=(-o "APT::Sandbox::User=root"); fi
apt-get "${apt_private[@]}" update -qq >&2 || die "apt-get update of Debian $suite's sources failed"
(cd "$work/src" && apt-get "${apt_private[@]}" source --download-only pgbouncer >&2) ||
	die "apt-get source pgbouncer ($suite) failed"
orig="$(ls "$work"/src/pgbouncer_*.orig.tar.* | head -1)"
tar -xf "$orig" -C "$work/src"
dir="$(ls -d "$work"/src/pgbouncer-*/ | head -1)"
say "building $(basename "$dir")"
(
	cd "$dir"
	./configure --prefix="$cache" --with-cares --without-pam --without-systemd >"$work/configure.log" 2>&1 ||
		{ cat "$work/configure.log" >&2; exit 1; }
	make -j"$(nproc)" pgbouncer >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
)
install -D -m 0755 "$dir/pgbouncer" "$cache/bin/pgbouncer"
new_enough "$cache/bin/pgbouncer" || die "the build gave PgBouncer $(version_of "$cache/bin/pgbouncer"), older than $min"
say "built PgBouncer $(version_of "$cache/bin/pgbouncer")"
echo "$cache/bin/pgbouncer"
