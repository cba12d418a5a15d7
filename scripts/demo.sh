#!/usr/bin/env bash
# natlb demo: a NAT gateway with three backends, built from network namespaces.
#
#   sudo scripts/demo.sh          (from the repository root; Debian 12 with a Rust toolchain)
#
# What it does, in order:
#   1. installs the Debian packages it needs, if any is missing (apt-get);
#   2. builds natlb (`cargo build --release`, as the user who called sudo);
#   3. builds this network in namespaces named natlb-demo-<pid>-*, exactly the plan of
#      examples/demo.toml (and of the test lab, tests/lab/mod.rs):
#
#        client                gateway (natlb)                        backend-N (N = 1..3)
#        eth0 ---------------- eth0          br0 ---- vbN ----------- eth0
#        198.51.100.2/24       198.51.100.1/24  192.0.2.1/24            192.0.2.1N/24
#        fd00:1::2/64          fd00:1::1/64     fd00:2::1/64            fd00:2::1N/64
#
#      client and backends route everything via the gateway; the VIPs 203.0.113.10 and
#      fd00:3::10 exist only as natlb's DNAT rules. Every backend serves HTTP on :8080 and a
#      UDP echo on :5353, both answering with their name and the address they see you as;
#   4. runs `natlb run` in the gateway namespace and shows: `natlb check`, the ruleset,
#      40 HTTP requests to the VIP (weights 3:1), a UDP request, IPv6, a reload (SIGHUP) that
#      changes a weight, and a stop (SIGTERM) after which traffic still flows.
#
# Exits 0 when every check passed, non-zero otherwise. On exit, error or Ctrl-C it kills
# every process it started and deletes every namespace it made (`ip netns list` is clean).
#
# Environment: NATLB_DEMO_FULL_RULESET=1 prints the whole `nft list table` instead of an
# excerpt; NATLB_DEMO_KEEP_TMP=1 keeps the temp dir (config copy, logs) for inspection.

set -Eeuo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_CONFIG="$REPO_ROOT/examples/demo.toml"
PREFIX="natlb-demo-$$"
NS_CLIENT="$PREFIX-client"
NS_GW="$PREFIX-gw"
BACKENDS=(1 2 3)                       # backend N: 192.0.2.1N, fd00:2::1N
VIP4=203.0.113.10
VIP6=fd00:3::10
REQUESTS=40

PACKAGES=(nftables iproute2 curl python3 pkg-config libnftnl-dev libmnl-dev)

NAMESPACES=()                          # every namespace we create, for cleanup
PIDS=()                                # every background process we start, for cleanup
FAILED_CHECKS=()
TMP=""
NATLB=""
NATLB_PID=""
declare -A HITS=()                     # backend name -> answers, filled by count_backends

# ------------------------------------------------------------------------------------------
# Output helpers
# ------------------------------------------------------------------------------------------

if [[ -t 1 ]]; then
    BOLD=$'\e[1m' GREEN=$'\e[32m' RED=$'\e[31m' DIM=$'\e[2m' RESET=$'\e[0m'
else
    BOLD="" GREEN="" RED="" DIM="" RESET=""
fi

heading() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
info()    { printf '    %s\n' "$*"; }
die()     { printf '%serror:%s %s\n' "$RED" "$RESET" "$*" >&2; exit 1; }

# check DESCRIPTION COMMAND...: runs COMMAND, prints ok/FAIL, remembers failures.
check() {
    local what=$1
    shift
    if "$@"; then
        printf '    %s[ok]%s   %s\n' "$GREEN" "$RESET" "$what"
    else
        printf '    %s[FAIL]%s %s\n' "$RED" "$RESET" "$what"
        FAILED_CHECKS+=("$what")
    fi
}

# Indent stdin: `indent` for our own output, `quote` for other programs' output and files.
indent()    { sed 's/^/    /'; }
quote()     { sed 's/^/    | /'; }
show_file() { quote <"$1"; }

# Runs a command in a namespace.
in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

# Writes a sysctl of a namespace (via /proc, so procps is not needed).
ns_sysctl() {
    local ns=$1 key=$2 value=$3
    in_ns "$ns" sh -c "echo $value > /proc/sys/${key//.//}"
}

# ------------------------------------------------------------------------------------------
# Cleanup: runs on every exit (normal, error, Ctrl-C, SIGTERM)
# ------------------------------------------------------------------------------------------

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM ERR
    # A signal's trap runs inside whatever command was running, redirections included (e.g.
    # retry's >/dev/null): report on the script's own stdout/stderr.
    exec 1>&"$STDOUT_FD" 2>&"$STDERR_FD"
    if ((${#PIDS[@]} + ${#NAMESPACES[@]} > 0)); then
        heading "Cleaning up"
    fi
    local pid ns
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    for ns in "${NAMESPACES[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        # Anything still running in our namespace was started by us: kill it by pid.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
        ip netns del "$ns" && info "deleted namespace $ns"
    done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${NATLB_DEMO_KEEP_TMP:-0} == 1 ]]; then
            info "kept $TMP"
        else
            rm -rf -- "$TMP"
        fi
    fi
    exit "$rc"
}

# Names the command that failed (set -e then exits, and cleanup runs). Only in the main shell:
# a command substitution that fails on purpose would otherwise report too.
on_error() {
    ((BASH_SUBSHELL == 0)) || return 0
    printf '%serror:%s line %s: "%s" failed (exit %s)\n' "$RED" "$RESET" "$1" "$2" "$3" >&2
}

# Copies of stdout/stderr for cleanup (see there); daemons started below do not inherit them.
exec {STDOUT_FD}>&1 {STDERR_FD}>&2
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'on_error "$LINENO" "$BASH_COMMAND" "$?"' ERR

# ------------------------------------------------------------------------------------------
# 1. Packages and build
# ------------------------------------------------------------------------------------------

install_packages() {
    local missing=() pkg
    command -v dpkg-query >/dev/null || die "this demo expects Debian (dpkg/apt-get)"
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    # Linking Rust code needs a C toolchain's `cc`; rustup does not bring one.
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    if ((${#missing[@]} == 0)); then
        info "all needed packages are installed (${PACKAGES[*]})"
        return
    fi
    heading "Installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Finds cargo for user $1 (its PATH under sudo usually lacks ~/.cargo/bin).
find_cargo() {
    local home=$1
    if [[ -x $home/.cargo/bin/cargo ]]; then
        echo "$home/.cargo/bin/cargo"
    elif command -v cargo >/dev/null; then
        command -v cargo
    else
        return 1
    fi
}

build_natlb() {
    heading "Building natlb (cargo build --release)"
    local target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    local cargo user=${SUDO_USER:-root} home
    home=$(getent passwd "$user" | cut -d: -f6)
    # Build as the user who ran sudo, so target/ and ~/.cargo stay theirs -- unless the target
    # dir already belongs to root (an earlier root build) or the user has no Rust toolchain.
    if [[ $user != root ]] && cargo=$(find_cargo "$home") &&
        { [[ ! -e $target_dir ]] || [[ $(stat -c %U "$target_dir") == "$user" ]]; }; then
        info "building as $user with $cargo"
        (cd "$REPO_ROOT" && runuser -u "$user" -- env HOME="$home" \
            PATH="$(dirname "$cargo"):$PATH" "$cargo" build --release)
    else
        cargo=$(find_cargo "$HOME") || {
            [[ $user != root && -e $target_dir ]] &&
                die "root has no cargo, and $target_dir is not $user's: chown -R $user $target_dir"
            die "cargo not found: install Rust (https://rustup.rs) first"
        }
        info "building with $cargo"
        (cd "$REPO_ROOT" && PATH="$(dirname "$cargo"):$PATH" "$cargo" build --release)
    fi
    NATLB="$target_dir/release/natlb"
    [[ -x $NATLB ]] || die "build finished but $NATLB is missing"
}

# ------------------------------------------------------------------------------------------
# 2. The network
# ------------------------------------------------------------------------------------------

# Creates a namespace with lo up, no DAD (addresses usable at once) and no rp_filter.
make_ns() {
    local ns=$1 family
    NAMESPACES+=("$ns")
    ip netns add "$ns"
    for family in all default; do
        ns_sysctl "$ns" "net.ipv6.conf.$family.accept_dad" 0
        ns_sysctl "$ns" "net.ipv4.conf.$family.rp_filter" 0
    done
    ip -n "$ns" link set lo up
}

build_network() {
    heading "Building the network (namespaces $PREFIX-*)"
    local n ns
    make_ns "$NS_CLIENT"
    make_ns "$NS_GW"
    for n in "${BACKENDS[@]}"; do
        make_ns "$PREFIX-b$n"
    done

    # gateway: forwarding on; eth0 towards the client, bridge br0 towards the backends.
    ns_sysctl "$NS_GW" net.ipv4.ip_forward 1
    ns_sysctl "$NS_GW" net.ipv6.conf.all.forwarding 1
    ip -n "$NS_GW" link add eth0 type veth peer name eth0 netns "$NS_CLIENT"
    ip -n "$NS_GW" addr add 198.51.100.1/24 dev eth0
    ip -n "$NS_GW" addr add fd00:1::1/64 dev eth0 nodad
    ip -n "$NS_GW" link set eth0 up
    ip -n "$NS_GW" link add br0 type bridge forward_delay 0 stp_state 0 mcast_snooping 0
    ip -n "$NS_GW" addr add 192.0.2.1/24 dev br0
    ip -n "$NS_GW" addr add fd00:2::1/64 dev br0 nodad
    ip -n "$NS_GW" link set br0 up

    # client: default routes via the gateway, so the VIPs go there.
    ip -n "$NS_CLIENT" addr add 198.51.100.2/24 dev eth0
    ip -n "$NS_CLIENT" addr add fd00:1::2/64 dev eth0 nodad
    ip -n "$NS_CLIENT" link set eth0 up
    ip -n "$NS_CLIENT" route add default via 198.51.100.1
    ip -n "$NS_CLIENT" -6 route add default via fd00:1::1
    info "client    $NS_CLIENT: 198.51.100.2/24 fd00:1::2/64"
    info "gateway   $NS_GW: eth0 198.51.100.1/24 fd00:1::1/64, br0 192.0.2.1/24 fd00:2::1/64"

    # backends: one veth each, its gateway end enslaved to br0; default routes via the gateway.
    for n in "${BACKENDS[@]}"; do
        ns="$PREFIX-b$n"
        ip -n "$NS_GW" link add "vb$n" type veth peer name eth0 netns "$ns"
        ip -n "$NS_GW" link set "vb$n" master br0 up
        ip -n "$ns" addr add "192.0.2.1$n/24" dev eth0
        ip -n "$ns" addr add "fd00:2::1$n/64" dev eth0 nodad
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add default via 192.0.2.1
        ip -n "$ns" -6 route add default via fd00:2::1
        info "backend-$n $ns: 192.0.2.1$n/24 fd00:2::1$n/64"
    done
}

# ------------------------------------------------------------------------------------------
# 3. Backends: HTTP on :8080 and UDP echo on :5353, dual-stack, one small Python program
# ------------------------------------------------------------------------------------------

write_helper() {
    cat >"$TMP/helper.py" <<'EOF'
"""natlb demo helper.
  helper.py serve NAME      HTTP on [::]:8080 and UDP echo on [::]:5353, answering
                            "NAME (you are PEER)"
  helper.py udp HOST PORT   send one datagram, print the answer (exit 1 after 3 timeouts)
"""
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def peer(addr):
    host = addr[0]
    return host[7:] if host.startswith("::ffff:") else host


def serve(name):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{name} (you are {peer(self.client_address)})\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class DualStack(ThreadingHTTPServer):
        address_family = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    def udp_echo():
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 5353))
        while True:
            data, addr = s.recvfrom(2048)
            reply = f"{name} (you are {peer(addr)}) echoes: {data.decode(errors='replace')}"
            s.sendto(reply.encode(), addr)

    threading.Thread(target=udp_echo, daemon=True).start()
    DualStack(("::", 8080), Handler).serve_forever()


def udp(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(3):
        s.sendto(b"hello natlb", (host, int(port)))
        try:
            print(s.recv(2048).decode(errors="replace"))
            return 0
        except socket.timeout:
            continue
    print(f"no answer from {host}:{port}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "udp":
        sys.exit(udp(sys.argv[2], sys.argv[3]))
EOF
}

# Retries COMMAND every 0.2 s for up to SECONDS; true as soon as it succeeds.
retry() {
    local seconds=$1 i
    shift
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

start_backends() {
    heading "Starting backends (HTTP :8080, UDP echo :5353)"
    local n
    for n in "${BACKENDS[@]}"; do
        # A plain command (not the in_ns function), so $! is the server's own pid:
        # `ip netns exec` execs it.
        ip netns exec "$PREFIX-b$n" python3 "$TMP/helper.py" serve "backend-$n" \
            >"$TMP/backend-$n.log" 2>&1 {STDOUT_FD}>&- {STDERR_FD}>&- &
        PIDS+=("$!")
    done
    for n in "${BACKENDS[@]}"; do
        retry 10 in_ns "$NS_GW" curl -sf --max-time 1 "http://192.0.2.1$n:8080/" ||
            die "backend-$n does not answer on 192.0.2.1$n:8080; its log:$(printf '\n'; cat "$TMP/backend-$n.log")"
        retry 10 in_ns "$NS_GW" curl -sf --max-time 1 "http://[fd00:2::1$n]:8080/" ||
            die "backend-$n does not answer on [fd00:2::1$n]:8080"
        info "backend-$n is up: $(in_ns "$NS_GW" curl -s "http://192.0.2.1$n:8080/")"
    done
}

# ------------------------------------------------------------------------------------------
# 4. natlb
# ------------------------------------------------------------------------------------------

# The daemon runs on a copy of examples/demo.toml in $TMP: the reload step edits it, and its
# control socket and state dir point into $TMP, so the demo writes nothing outside it.
prepare_config() {
    sed -e "s|^control_socket = .*|control_socket = \"$TMP/control.sock\"|" \
        -e "s|^state_dir = .*|state_dir = \"$TMP/state\"|" \
        "$DEMO_CONFIG" >"$TMP/natlb.toml"
    mkdir -p "$TMP/state"
}

log_has() { grep -q -- "$1" "$TMP/natlb.log"; }

start_natlb() {
    heading "Starting natlb in the gateway: natlb run -c $TMP/natlb.toml"
    # `ip netns exec` and `env` exec, so $! is natlb's own pid: SIGHUP/SIGTERM go to natlb.
    ip netns exec "$NS_GW" env NATLB_LOG="${NATLB_LOG:-info}" "$NATLB" run -c "$TMP/natlb.toml" \
        >"$TMP/natlb.log" 2>&1 {STDOUT_FD}>&- {STDERR_FD}>&- &
    NATLB_PID=$!
    PIDS+=("$NATLB_PID")
    local i
    for ((i = 0; i < 150; i++)); do
        log_has "natlb is running" && break
        if ! kill -0 "$NATLB_PID" 2>/dev/null; then
            show_file "$TMP/natlb.log"
            die "natlb exited during start-up (log above)"
        fi
        sleep 0.2
    done
    log_has "natlb is running" || { show_file "$TMP/natlb.log"; die "natlb did not start within 30 s"; }
    info "natlb (pid $NATLB_PID) logs to $TMP/natlb.log:"
    show_file "$TMP/natlb.log"
}

# Prints the non-empty sets and maps (services, backends, slots) and a one-line summary of each
# chain; NATLB_DEMO_FULL_RULESET=1 prints everything.
show_ruleset() {
    in_ns "$NS_GW" nft list table inet natlb >"$TMP/ruleset.nft"
    if [[ ${NATLB_DEMO_FULL_RULESET:-0} == 1 ]]; then
        show_file "$TMP/ruleset.nft"
        return
    fi
    info "$(wc -l <"$TMP/ruleset.nft") lines; the sets and maps holding elements, and the chains:"
    awk '
        /^table /                 { print; next }
        /^\t(set|map) /           { block = $0 "\n"; inset = 1; full = 0; next }
        inset                     { block = block $0 "\n"
                                    if ($0 ~ /elements = /) full = 1
                                    if ($0 ~ /^\t}/) { inset = 0; if (full) printf "%s", block }
                                    next }
        /^\tchain /               { name = $2; rules = 0; next }
        /^\t\ttype /              { hook = $0; sub(/^\t\t/, "", hook); next }
        /^\t\t/ && name != ""     { rules++; next }
        /^\t}/ && name != ""      { printf "\tchain %s { %s ... %d rules }\n", name, hook, rules
                                    name = ""; next }
        /^}/                      { print }
    ' "$TMP/ruleset.nft" | quote
    info "${DIM}(NATLB_DEMO_FULL_RULESET=1 shows it all)${RESET}"
}

# show_slots SERVICE: the slot -> backend elements of SERVICE in map slots4 (best effort: the
# layout is natlb's business, see nft-templates/).
show_slots() {
    in_ns "$NS_GW" nft list map inet natlb slots4 2>/dev/null |
        grep -oE "[^{,]* comment \"$1 [^\"]*\" : [^,}]*" | sed -E 's/^[[:space:]]+|[[:space:]]+$//g' | quote ||
        info "(no map slots4 in this version of the ruleset)"
}

# count_backends URL N: N requests from the client; fills HITS (backend name -> answers; the
# key "no answer" counts failures) and prints a bar per backend.
count_backends() {
    local url=$1 n=$2 i reply name
    HITS=()
    for ((i = 0; i < n; i++)); do
        if reply=$(in_ns "$NS_CLIENT" curl -sf -g --connect-timeout 2 --max-time 3 "$url"); then
            name=${reply%% *}
        else
            name="no answer"
        fi
        HITS[$name]=$((${HITS[$name]:-0} + 1))
        # A VIP that does not answer at all: say so now rather than wait out every timeout.
        if ((i == 2 && ${HITS[no answer]:-0} == 3)); then
            info "no answer to the first 3 requests; skipping the other $((n - 3))"
            HITS[no answer]=$n
            break
        fi
    done
    while IFS= read -r name; do
        printf '    %-10s %3d  %s\n' "$name" "${HITS[$name]}" \
            "$(printf '%*s' "${HITS[$name]}" '' | tr ' ' '#')"
    done < <(printf '%s\n' "${!HITS[@]}" | sort)
}

hits() { echo "${HITS[$1]:-0}"; }

# ------------------------------------------------------------------------------------------
# The demonstration
# ------------------------------------------------------------------------------------------

demo_check() {
    heading "natlb check -c examples/demo.toml"
    local out rc
    out=$(cd "$REPO_ROOT" && "$NATLB" check -c examples/demo.toml 2>&1) && rc=0 || rc=$?
    indent <<<"$out"
    check "the demo config is valid" test "$rc" -eq 0
}

demo_ruleset() {
    heading "nft list table inet natlb   (in the gateway)"
    show_ruleset
}

demo_http_shares() {
    local b1 b2
    heading "$REQUESTS HTTP requests from the client to http://$VIP4/  (weights 3:1, backend-3 is a backup)"
    count_backends "http://$VIP4/" "$REQUESTS"
    b1=$(hits backend-1) b2=$(hits backend-2)
    info "sample answer: $(in_ns "$NS_CLIENT" curl -s --max-time 3 "http://$VIP4/" || echo none)"
    info "${DIM}(snat = \"masquerade\": the backends see the gateway's 192.0.2.1)${RESET}"
    check "all $REQUESTS requests answered" test "$((b1 + b2 + $(hits backend-3)))" -eq "$REQUESTS"
    check "backend-1 and backend-2 both served, the backup did not" \
        test "$b1" -gt 0 -a "$b2" -gt 0 -a "$(hits backend-3)" -eq 0
    check "backend-1 got more than backend-2 (expect about 3:1, got $b1:$b2)" test "$b1" -gt "$b2"
}

demo_udp() {
    heading "UDP: one datagram from the client to $VIP4:53  (service dns, snat = \"none\")"
    local out
    if out=$(in_ns "$NS_CLIENT" python3 "$TMP/helper.py" udp "$VIP4" 53 2>&1); then
        info "$out"
        info "${DIM}(snat = \"none\": the backend sees the client's own 198.51.100.2)${RESET}"
        check "UDP answer from a backend" true
    else
        info "$out"
        check "UDP answer from a backend" false
    fi
}

demo_ipv6() {
    heading "IPv6: curl http://[$VIP6]/ from the client (service web6, equal weights)"
    count_backends "http://[$VIP6]/" 10
    info "sample answer: $(in_ns "$NS_CLIENT" curl -s -g --max-time 3 "http://[$VIP6]/" || echo none)"
    check "all 10 IPv6 requests answered" test "$(($(hits backend-1) + $(hits backend-2)))" -eq 10
}

# reload_outcome LINES: natlb's log after its first LINES lines, if it reports how a reload ended.
reload_outcome() {
    tail -n +"$(($1 + 1))" "$TMP/natlb.log" | grep -E 'reload (applied|refused|failed)|reload: nothing'
}

reload_applied() { reload_outcome "$1" | grep -q 'reload applied'; }

demo_reload() {
    heading "Reload: backend-2's weight 1 -> 3 in $TMP/natlb.toml, then kill -HUP $NATLB_PID"
    # The web service's second backend is the line after address = "192.0.2.12:8080".
    sed -i '/^address = "192.0.2.12:8080"/{n;s/^weight = 1$/weight = 3/}' "$TMP/natlb.toml"
    diff -u --label examples/demo.toml --label "$TMP/natlb.toml" \
        "$DEMO_CONFIG" "$TMP/natlb.toml" | quote || true
    grep -A1 '^address = "192.0.2.12:8080"' "$TMP/natlb.toml" | grep -q '^weight = 3$' ||
        die "could not edit the weight in $TMP/natlb.toml"
    "$NATLB" check -c "$TMP/natlb.toml" 2>&1 | indent

    local before i
    before=$(wc -l <"$TMP/natlb.log")
    kill -HUP "$NATLB_PID"
    for ((i = 0; i < 50; i++)); do
        reload_outcome "$before" >/dev/null && break
        sleep 0.2
    done
    info "natlb's log:"
    tail -n +"$((before + 1))" "$TMP/natlb.log" | quote
    check "natlb applied the reload" reload_applied "$before"
    info "the web service's slots now (map slots4):"
    show_slots web

    heading "$REQUESTS HTTP requests after the reload  (weights 3:3)"
    count_backends "http://$VIP4/" "$REQUESTS"
    local b1 b2
    b1=$(hits backend-1) b2=$(hits backend-2)
    check "all $REQUESTS requests answered" test "$((b1 + b2))" -eq "$REQUESTS"
    check "both backends served (expect about 1:1, got $b1:$b2)" test "$b1" -gt 0 -a "$b2" -gt 0
}

status_shows() { "$NATLB" status -c "$TMP/natlb.toml" | grep -q -- "$1"; }

demo_operate() {
    heading "Operating: natlb status, drain, enable (over the control socket $TMP/control.sock)"
    "$NATLB" status -c "$TMP/natlb.toml" 2>&1 | indent
    check "natlb status lists backend-1 as up and enabled" status_shows "192.0.2.11:8080 *up *enabled"

    heading "natlb drain web 192.0.2.11:8080   (a deploy: no new connections, established ones continue)"
    "$NATLB" drain web 192.0.2.11:8080 -c "$TMP/natlb.toml" 2>&1 | indent
    count_backends "http://$VIP4/" 20
    check "the drained backend-1 got no new request ($(hits backend-1) of 20)" test "$(hits backend-1)" -eq 0
    "$NATLB" status -c "$TMP/natlb.toml" 2>&1 | indent
    check "natlb status shows it drained" status_shows "192.0.2.11:8080 *up *drained"

    heading "natlb enable web 192.0.2.11:8080"
    "$NATLB" enable web 192.0.2.11:8080 -c "$TMP/natlb.toml" 2>&1 | indent
    count_backends "http://$VIP4/" 40
    check "backend-1 serves again ($(hits backend-1) of 40)" test "$(hits backend-1)" -gt 0
}

demo_stop() {
    heading "Stop natlb: kill -TERM $NATLB_PID  (keep_rules_on_exit: the rules stay)"
    local before rc=0
    before=$(wc -l <"$TMP/natlb.log")
    kill -TERM "$NATLB_PID"
    wait "$NATLB_PID" || rc=$?
    NATLB_PID=""
    tail -n +"$((before + 1))" "$TMP/natlb.log" | quote
    check "natlb exited with status 0 (got $rc)" test "$rc" -eq 0

    info "the kernel still holds the web service's slots:"
    show_slots web

    heading "natlb is gone; 10 more HTTP requests to http://$VIP4/"
    count_backends "http://$VIP4/" 10
    check "traffic still flows without the daemon" \
        test "$(($(hits backend-1) + $(hits backend-2)))" -eq 10
}

main() {
    [[ $EUID -eq 0 ]] || die "run me as root: sudo $0"
    [[ -f $DEMO_CONFIG ]] || die "$DEMO_CONFIG not found"

    heading "Checking Debian packages"
    install_packages
    build_natlb

    TMP=$(mktemp -d /tmp/natlb-demo.XXXXXX)
    write_helper
    prepare_config
    build_network
    start_backends
    start_natlb

    demo_check
    demo_ruleset
    demo_http_shares
    demo_udp
    demo_ipv6
    demo_reload
    demo_operate
    demo_stop

    heading "Summary"
    if ((${#FAILED_CHECKS[@]} > 0)); then
        printf '    %s%d check(s) failed:%s\n' "$RED" "${#FAILED_CHECKS[@]}" "$RESET"
        printf '      - %s\n' "${FAILED_CHECKS[@]}"
        info "natlb's log was:"
        show_file "$TMP/natlb.log"
        exit 1
    fi
    printf '    %severy check passed%s\n' "$GREEN" "$RESET"
}

main "$@"
