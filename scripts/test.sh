#!/usr/bin/env bash
# natlb's test command (CI runs it through .ci/run):
#
#   sudo scripts/test.sh          (from anywhere in the repository)
#
#   1. cargo fmt --check
#   2. cargo clippy --all-targets -- -D warnings
#   3. cargo test                  unit, integration (real kernel, network namespaces) and doc tests
#   4. no leftover namespaces      the tests' namespaces are named nl<pid>x<n><role>; after the
#                                  suite none may remain whose test process is gone
#
# Every step runs even if an earlier one failed (so cargo test's summary is always printed);
# the exit status is non-zero if any step failed. fmt and clippy are skipped, with a message,
# when rustfmt/clippy are not installed and `rustup component add` cannot add them.
#
# Needs root: the integration tests create network namespaces. Under sudo it uses the calling
# user's Rust toolchain (~/.cargo, ~/.rustup) and afterwards gives the files it created in
# target/ and there back to that user. Installs missing Debian packages the tests need.
# Extra arguments go to cargo test, e.g. `sudo scripts/test.sh --test e2e`.

set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGES=(nftables libnftnl-dev libmnl-dev pkg-config conntrack iproute2 curl)
NETNS_PATTERN='^nl([0-9]+)x'        # tests/lab/mod.rs: nl{pid}x{counter}{role}

FAILED=()
SKIPPED=()

heading() { printf '\n==> %s\n' "$*"; }
die()     { printf 'error: %s\n' "$*" >&2; exit 1; }

# step NAME COMMAND...: runs a step, records its outcome.
step() {
    local name=$1
    shift
    heading "$name"
    if "$@"; then
        printf -- '--> %s: ok\n' "$name"
    else
        printf -- '--> %s: FAILED\n' "$name"
        FAILED+=("$name")
    fi
}

install_packages() {
    local missing=() pkg
    command -v dpkg-query >/dev/null || return 0  # not Debian: the caller provides them
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    heading "Installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            </dev/null
}

# Under sudo, root usually has no Rust toolchain of its own: use the calling user's, and hand
# back the files this run creates in its target dir and toolchain dirs.
setup_toolchain() {
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [[ -x $home/.cargo/bin/cargo ]]; then
            export PATH="$home/.cargo/bin:$PATH"
            export CARGO_HOME="${CARGO_HOME:-$home/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}"
        fi
        OWNER=$SUDO_USER
        trap give_back_files EXIT
    fi
    [[ -d $HOME/.cargo/bin ]] && export PATH="$PATH:$HOME/.cargo/bin"
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
}

give_back_files() {
    local group dir root_home
    group=$(id -gn "$OWNER")
    root_home=$(getent passwd root | cut -d: -f6)
    for dir in "${CARGO_TARGET_DIR:-$REPO_ROOT/target}" "${CARGO_HOME:-}" "${RUSTUP_HOME:-}"; do
        [[ -n $dir && -d $dir && $dir != "$root_home"* ]] || continue  # never root's own
        find "$dir" -user root -exec chown -h "$OWNER:$group" {} + 2>/dev/null
    done
}

# has_component fmt|clippy: the cargo subcommand works, or rustup can add it.
has_component() {
    local sub=$1 component=$1
    [[ $sub == fmt ]] && component=rustfmt
    cargo "$sub" --version >/dev/null 2>&1 && return 0
    if command -v rustup >/dev/null; then
        echo "cargo $sub is missing; trying: rustup component add $component"
        rustup component add "$component" && cargo "$sub" --version >/dev/null 2>&1 && return 0
    fi
    return 1
}

# optional_step NAME SUBCOMMAND COMMAND...: like step, skipped if the component is unavailable.
optional_step() {
    local name=$1 sub=$2
    shift 2
    if has_component "$sub"; then
        step "$name" "$@"
    else
        heading "$name"
        echo "--> SKIPPED: cargo $sub is not installed and rustup could not add it"
        SKIPPED+=("$name")
    fi
}

# The namespaces before the run: leftovers of earlier runs are reported, not blamed on this one.
list_test_netns() {
    ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E "$NETNS_PATTERN" || true
}

check_netns() {
    local ns pid leaked=() earlier=() running=()
    while read -r ns; do
        [[ -n $ns ]] || continue
        [[ $ns =~ $NETNS_PATTERN ]]
        pid=${BASH_REMATCH[1]}
        if grep -qxF -- "$ns" <<<"$NETNS_BEFORE"; then
            earlier+=("$ns")
        elif kill -0 "$pid" 2>/dev/null; then
            running+=("$ns")        # its test process still runs: another run's, not ours
        else
            leaked+=("$ns")
        fi
    done < <(list_test_netns)
    echo "ip netns list:"
    ip netns list | sed 's/^/    /'
    if ((${#running[@]})); then
        echo "in use by test processes still running (another run?), not counted: ${running[*]}"
    fi
    if ((${#earlier[@]})); then
        echo "left over from an earlier run (remove with 'ip netns del NAME'): ${earlier[*]}"
    fi
    if ((${#leaked[@]})); then
        echo "LEFT OVER by this run's tests (their process is gone): ${leaked[*]}"
        return 1
    fi
    echo "no namespace of this run's tests is left"
}

main() {
    cd "$REPO_ROOT" || exit 1
    [[ $EUID -eq 0 ]] ||
        die "needs root (the integration tests create network namespaces): sudo scripts/test.sh"
    install_packages || die "could not install the Debian packages: ${PACKAGES[*]}"
    setup_toolchain
    cargo --version
    NETNS_BEFORE=$(list_test_netns)

    optional_step "cargo fmt --check" fmt cargo fmt --check
    optional_step "cargo clippy --all-targets -- -D warnings" clippy \
        cargo clippy --all-targets -- -D warnings
    step "cargo test" cargo test "$@"
    step "leftover network namespaces" check_netns

    heading "Summary"
    ((${#SKIPPED[@]})) && printf 'skipped: %s\n' "${SKIPPED[@]}"
    if ((${#FAILED[@]})); then
        printf 'FAILED: %s\n' "${FAILED[@]}"
        exit 1
    fi
    echo "all steps passed"
}

main "$@"
