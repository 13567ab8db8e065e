# Sourced by every network scenario. Runs inside `unshare --net --mount` (see
# tests/network.rs): this namespace is the "host"; nothing here touches the real host.
set -euo pipefail
TOOL="$(dirname "${BASH_SOURCE[0]}")/tool.py"
WORK=$(mktemp -d -p /var/tmp)
# Tasks run as nobody, and the checkout may be closed to it (root's 0700 /root on a fresh
# Debian machine): they run this copy of the tool instead.
TASK_TOOL="$WORK/shared/tool.py"
mkdir -p "$WORK/shared" && cp "$TOOL" "$TASK_TOOL" && chmod 0755 "$WORK" "$WORK/shared"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"; }

# A private /run (for /run/netns and run_dir), loopback, and an "outside world" namespace
# on an uplink: host 192.0.2.1/24 <-> world 192.0.2.2/24, the host's default route via the
# world. The host's advertise address is therefore 192.0.2.1.
setup_host() {
    mount -t tmpfs tmpfs /run
    ip link set lo up
    ip netns add world
    ip link add uplink type veth peer name eth0 netns world
    ip addr add 192.0.2.1/24 dev uplink
    ip link set uplink up
    ip -n world addr add 192.0.2.2/24 dev eth0
    ip -n world link set eth0 up
    ip -n world link set lo up
    ip route add default via 192.0.2.2
}

# The same uplink with IPv6 (documentation prefix 2001:db8::/64): host 2001:db8::1, world
# 2001:db8::2, the host's IPv6 default route via the world. No duplicate address detection,
# so the addresses are usable at once.
setup_host_ipv6() {
    ip addr add 2001:db8::1/64 dev uplink nodad
    ip -n world addr add 2001:db8::2/64 dev eth0 nodad
    ip -6 route add default via 2001:db8::2
}

# write_config FILE: two bridge groups, a (http 8080 -> 80) and b (no ports).
write_config() {
    cat > "$1" <<TOML
[agent]
data_dir = "$WORK/data"
run_dir = "/run/outpost"
cgroup_parent = "outpost-test-$$.slice"
[network]
bridge = "outpost"
subnet = "10.77.0.0/24"
${EXTRA_NETWORK:-}
[[group]]
name = "a"
[group.network]
mode = "bridge"
[[group.network.port]]
label = "http"
static = 8080
to = 80
[[group.task]]
name = "t"
command = "/bin/true"
[[group]]
name = "b"
[group.network]
mode = "bridge"
[[group.task]]
name = "t"
command = "/bin/true"
TOML
}

# serve NETNS|host PROTO PORT NAME [ADDR]: a listener in a namespace (default: every
# address of both families), waited for.
serve() {
    local ns=$1 proto=$2 port=$3 name=$4 out="$WORK/serve-$1-$2-$3"
    if [ "$ns" = host ]; then
        python3 "$TOOL" serve "$proto" "$port" "$name" "${5:-::}" > "$out" &
    else
        ip netns exec "$ns" python3 "$TOOL" serve "$proto" "$port" "$name" "${5:-::}" > "$out" &
    fi
    PIDS+=($!)
    for _ in $(seq 100); do grep -q ready "$out" 2>/dev/null && return; sleep 0.05; done
    fail "listener $name did not start"
}

# ask [NETNS] PROTO HOST PORT
ask() {
    if [ "$1" = host ]; then shift; python3 "$TOOL" ask "$@"; else local ns=$1; shift; ip netns exec "$ns" python3 "$TOOL" ask "$@"; fi
}

dump() { python3 "$TOOL" dump; }

# wait_for_dump EXPECTED_FILE: the kernel removes a deleted namespace's veth asynchronously.
wait_for_dump() {
    for _ in $(seq 100); do dump > "$WORK/now.json"; cmp -s "$WORK/now.json" "$1" && return; sleep 0.05; done
    diff -u "$1" "$WORK/now.json" >&2 || true
    fail "state did not return to $1"
}
