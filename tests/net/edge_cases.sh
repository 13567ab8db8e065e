# firewall = "none" installs no table (and removes ours); a bridge name taken by another
# kind of interface is refused with a clear message before anything changes.
source "$(dirname "$0")/lib.sh"
setup_host
write_config "$WORK/outpost.toml"
EXTRA_NETWORK='firewall = "none"' write_config "$WORK/nofw.toml"

"$OUTPOST" apply -c "$WORK/outpost.toml"
nft list tables | grep -q 'table ip outpost' || fail "nftables mode installs table ip outpost"
"$OUTPOST" apply -c "$WORK/nofw.toml"
if nft list tables | grep -q outpost; then fail "firewall = none must leave no outpost table"; fi
ip netns | grep -q outpost-a || fail "groups stay up without the firewall"
"$OUTPOST" teardown -c "$WORK/nofw.toml"

# A config without bridge groups needs no bridge: applying it after a bridge config removes
# the bridge, the namespaces and the rules.
cat > "$WORK/host-only.toml" <<TOML
[agent]
data_dir = "$WORK/data"
cgroup_parent = "outpost-test-$$.slice"
[[group]]
name = "h"
[[group.task]]
name = "t"
command = "/bin/true"
TOML
dump > "$WORK/empty.json"
"$OUTPOST" apply -c "$WORK/outpost.toml"
"$OUTPOST" apply -c "$WORK/host-only.toml"
wait_for_dump "$WORK/empty.json"

ip link add outpost type veth peer name outpost-peer
dump > "$WORK/before.json"
if "$OUTPOST" apply -c "$WORK/outpost.toml" 2> "$WORK/err"; then fail "apply must refuse a non-bridge named like the bridge"; fi
grep -q 'network.bridge outpost: an interface with that name exists and is a veth, not a bridge' "$WORK/err" \
    || fail "unclear error: $(cat "$WORK/err")"
dump > "$WORK/after.json"
diff -u "$WORK/before.json" "$WORK/after.json" || fail "a refused apply changed the host"
echo "edge cases: firewall none, host-only config leaves nothing, bridge name conflict refused without changes"
