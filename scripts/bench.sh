#!/usr/bin/env bash
# natlb benchmarks, each in fresh network namespaces.
#
# Commit benchmark (the default): cold install, nft -f reference, one-backend withdraw/restore
# commits and daemon RSS at 1k, 10k and 50k services x 10 backends.
#
#   sudo scripts/bench.sh [--sizes 1000,10000,50000] [--rounds N] [--backends 10]
#                         [--seed S] [--no-nft] [--no-rss]
#
# Same as `cargo bench --bench commit -- [options]` run as root. The full run takes about 5-10
# minutes.
#
# Health benchmark (--health, anywhere on the line; the other options then go to it): the real
# daemon probing 10k TCP backends at 1 s (remote hosts played by a TUN device and a responder
# thread; --loopback: a listener on the namespace's loopback): natlb's CPU and RSS, and probe
# decision -> kernel commit times for backends it makes fail one at a time.
#
#   sudo scripts/bench.sh --health [--sizes 10000x1,1000x10,10000x2] [--rounds 30]
#                                  [--window SECONDS] [--seed S] [--keep-logs DIR] [--notrack]
#                                  [--loopback]
#
# Same as `cargo bench --bench health -- [options]` run as root. The full run takes about 8
# minutes (more when probes fail by themselves: see --notrack in benches/health.rs).
#
# Builds the benchmark (release; as the user who called sudo, if any), runs it as root and
# prints markdown tables on stdout (progress on stderr). It measures; it asserts no timings.
# Every namespace (natlb-bench-*, natlb-hbench-*) and temp file it makes is removed on exit,
# error or Ctrl-C.

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

# --health selects the health benchmark; every other argument goes to the benchmark.
bench=commit
args=()
for a in "$@"; do
	if [ "$a" = --health ]; then
		bench=health
	else
		args+=("$a")
	fi
done

echo "bench.sh: building the $bench benchmark (release)" >&2
exe=$("${build_as[@]}" cargo bench --bench "$bench" --no-run --message-format=json |
	grep '"kind":\["bench"\]' | grep "\"name\":\"$bench\"" |
	sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
	echo "bench.sh: cannot find the built benchmark executable" >&2
	exit 1
fi

exec "$exe" "${args[@]}"
