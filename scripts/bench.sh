#!/usr/bin/env bash
# natlb commit benchmark: cold install, nft -f reference, one-backend withdraw/restore commits
# and daemon RSS at 1k, 10k and 50k services x 10 backends, each in fresh network namespaces.
#
#   sudo scripts/bench.sh [--sizes 1000,10000,50000] [--rounds N] [--backends 10]
#                         [--seed S] [--no-nft] [--no-rss]
#
# Builds benches/commit.rs (release; as the user who called sudo, if any), runs it as root and
# prints a markdown table on stdout (progress on stderr). It measures; it asserts no timings.
# The full run takes about 5-10 minutes. Every namespace (natlb-bench-*) and temp file it makes
# is removed on exit, error or Ctrl-C.
#
# Same as `cargo bench --bench commit -- [options]` run as root.

set -Eeuo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "bench.sh: needs root (network namespaces, nf_tables): sudo $0 $*" >&2
	exit 1
fi
for tool in ip nft cargo; do
	command -v "$tool" >/dev/null || {
		echo "bench.sh: $tool not found in PATH" >&2
		exit 1
	}
done

# Under sudo, build as the calling user so that target/ stays theirs.
build_as=()
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	# shellcheck disable=SC2054 # the commas belong to --preserve-env's value
	build_as=(sudo -u "$SUDO_USER" -H --preserve-env=PATH,CARGO_TARGET_DIR,CARGO_HOME,RUSTUP_HOME)
fi

echo "bench.sh: building the benchmark (release)" >&2
exe=$("${build_as[@]}" cargo bench --bench commit --no-run --message-format=json |
	grep '"kind":\["bench"\]' | grep '"name":"commit"' |
	sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
	echo "bench.sh: cannot find the built benchmark executable" >&2
	exit 1
fi

exec "$exe" "$@"
