#!/usr/bin/env bash
# jaeger.sh — print the path of a Jaeger v2 binary, building it first if
# it is not cached yet. Used by export's end-to-end test (which runs this
# script itself when PGTRACE_JAEGER_BIN is unset) and by .ci/run.
#
# `go install github.com/jaegertracing/jaeger/cmd/jaeger@VERSION` is refused
# because Jaeger's go.mod has a replace directive, so the binary is built
# from a throwaway module in a temporary directory (never inside the repo)
# that requires Jaeger and copies its replace directives. Only the Go module
# proxy is needed. The first build takes several minutes on 2 cores; the
# result is cached outside the repo, keyed by version:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/pgtrace/jaeger-$JAEGER_VERSION/jaeger
#
# Idempotent: a cached binary is printed at once. Concurrent callers are
# serialized with flock (when available) so the build runs once.
#
# Usage:
#   scripts/jaeger.sh            # prints the binary's path (progress on stderr)
#   JAEGER_VERSION=v1.76.0 scripts/jaeger.sh
set -euo pipefail

version="${JAEGER_VERSION:-v1.76.0}"
module="github.com/jaegertracing/jaeger"
cache_root="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/pgtrace"
dir="$cache_root/jaeger-$version"
bin="$dir/jaeger"

say() { printf 'jaeger.sh: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

# A cached binary counts only if it runs.
usable() { [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; }

if usable; then
	echo "$bin"
	exit 0
fi

command -v go >/dev/null || die "go is not installed; it is needed to build Jaeger $version"
mkdir -p "$dir" || die "cannot create cache directory $dir"

# Serialize builds of the same version (CI's script and a test may race).
if command -v flock >/dev/null; then
	exec 9>"$dir/.lock"
	if ! flock -n 9; then
		say "another build of Jaeger $version is running; waiting for its lock $dir/.lock"
		flock 9
	fi
	if usable; then
		echo "$bin"
		exit 0
	fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/pgtrace-jaeger-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
say "building Jaeger $version into $bin (first time only; takes several minutes)"

# The build runs outside any workspace or vendor setup of the caller.
export GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" GO111MODULE=on
export CGO_ENABLED=0
# Jaeger asks for an older Go than the local one; a newer local Go builds it.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
if [ "$GOTOOLCHAIN" = local ]; then export GOTOOLCHAIN=auto; fi

cd "$work"
go mod init pgtrace.invalid/jaegerbuild >/dev/null 2>&1 || die "go mod init failed in $work"

# Jaeger's own go.mod: copy its replace directives, which `go install` and a
# plain dependency would otherwise ignore.
say "fetching $module@$version from the module proxy"
modfile="$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[ -n "$modfile" ] && [ -f "$modfile" ] || die "go mod download $module@$version failed (is the Go module proxy reachable?)"
go mod edit -require="$module@$version"
# Single-line replaces ("replace a => b v") and those inside a replace ( ... ) block.
awk '
	/^replace[[:space:]]*\(/ { inblock = 1; next }
	inblock && /^\)/ { inblock = 0; next }
	inblock && NF { print; next }
	/^replace[[:space:]]/ { sub(/^replace[[:space:]]+/, ""); print }
' "$modfile" | while read -r line; do
	old="$(echo "$line" | awk -F'=>' '{gsub(/^[ \t]+|[ \t]+$/, "", $1); gsub(/[ \t]+/, "@", $1); print $1}')"
	new="$(echo "$line" | awk -F'=>' '{gsub(/^[ \t]+|[ \t]+$/, "", $2); gsub(/[ \t]+/, "@", $2); print $2}')"
	case "$new" in
	.* | /*) say "skipping local replace $line" ;;
	*)
		say "replace $old => $new"
		go mod edit -replace="$old=$new"
		;;
	esac
done

say "resolving dependencies"
go get "$module/cmd/jaeger@$version" >&2 || die "go get $module/cmd/jaeger@$version failed"

say "compiling (go build $module/cmd/jaeger)"
go build -trimpath -ldflags="-s -w" -o "$work/jaeger" "$module/cmd/jaeger" >&2 ||
	die "go build $module/cmd/jaeger failed"
"$work/jaeger" version >/dev/null 2>&1 || die "the built binary does not run ($work/jaeger version)"
mv -f "$work/jaeger" "$bin"

say "built $bin in $(($(date +%s) - start))s"
echo "$bin"
