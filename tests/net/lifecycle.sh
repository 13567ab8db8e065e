# Apply twice = same state; teardown returns links, namespaces, addresses and routes of both
# families, sysctls and nf_tables to exactly what they were; leases (IPv4 and IPv6) survive
# a restart and a "reboot" (everything gone but the state file). The bridge is dual-stack.
source "$(dirname "$0")/lib.sh"
setup_host
setup_host_ipv6
EXTRA_NETWORK='subnet_ipv6 = "fd00:77::/120"' write_config "$WORK/outpost.toml"
# The kernel's link-local addresses finish duplicate address detection first, so that
# "before" is not caught with a flag that "after" no longer has.
for _ in $(seq 100); do ip -6 addr | grep -q tentative || break; sleep 0.05; done
ipv6_sysctls() { for k in all/forwarding default/forwarding uplink/forwarding uplink/accept_ra; do echo "$k $(cat /proc/sys/net/ipv6/conf/$k)"; done; }
ip -j link > "$WORK/links-before"; ip netns > "$WORK/netns-before"; nft list ruleset > "$WORK/nft-before"
ip -6 addr > "$WORK/addr6-before"; ip -6 route > "$WORK/route6-before"; ipv6_sysctls > "$WORK/sysctl6-before"
dump > "$WORK/before.json"

"$OUTPOST" apply -c "$WORK/outpost.toml"
dump > "$WORK/first.json"
"$OUTPOST" apply -c "$WORK/outpost.toml"
dump > "$WORK/second.json"
diff -u "$WORK/first.json" "$WORK/second.json" || fail "a second apply changed the state"
grep -q '"outpost-a"' "$WORK/first.json" || fail "namespace outpost-a missing"
expect_eq "$(ip -n outpost-a -br -4 addr show eth0 | awk '{print $3}')" "10.77.0.2/24" "a's address"
expect_eq "$(ip -n outpost-b route show default)" "default via 10.77.0.1 dev eth0 proto static " "b's default route"
expect_eq "$(ip -n outpost-a -br -6 addr show eth0 scope global | awk '{print $3}')" "fd00:77::2/120" "a's IPv6 address"
expect_eq "$(ip -n outpost-b -6 route show default | awk '{print $1, $2, $3}')" "default via fd00:77::1" "b's IPv6 default route"
expect_eq "$(cat /proc/sys/net/ipv6/conf/all/forwarding)" "1" "IPv6 forwarding"
grep -qx 'net/ipv6/conf/all/forwarding = 1' /run/sysctl.d/50-outpost-outpost.conf || fail "IPv6 sysctls kept in /run/sysctl.d"
expect_eq "$(ip netns exec outpost-a cat /proc/sys/net/ipv4/conf/eth0/arp_notify)" "1" "eth0 arp_notify"
expect_eq "$(ip netns exec outpost-a cat /proc/sys/net/ipv4/conf/eth0/rp_filter)" "2" "eth0 rp_filter"
expect_eq "$(cat /proc/sys/net/ipv4/conf/outpost/route_localnet)" "1" "bridge route_localnet"
expect_eq "$(ip -n outpost-a -br link show lo | awk '{print $2}')" "UNKNOWN" "lo is up"
grep -qx 'net/ipv4/conf/outpost/route_localnet = 1' /run/sysctl.d/50-outpost-outpost.conf || fail "sysctls kept in /run/sysctl.d"

# Reboot: namespaces, links and rules vanish, the state file stays.
for ns in outpost-a outpost-b; do ip netns del "$ns"; done
ip link del outpost
nft flush ruleset
wait_for_dump "$WORK/before.json"
"$OUTPOST" apply -c "$WORK/outpost.toml"
dump > "$WORK/rebooted.json"
diff -u "$WORK/first.json" "$WORK/rebooted.json" || fail "state after a reboot differs"

# A new group listed first does not take the existing groups' addresses.
{ printf '[[group]]\nname = "c"\n[group.network]\nmode = "bridge"\n[[group.task]]\nname = "t"\ncommand = "/bin/true"\n'; } > "$WORK/c.toml"
awk -v c="$(cat "$WORK/c.toml")" '/^\[\[group\]\]$/ && !done { print c; done=1 } { print }' "$WORK/outpost.toml" > "$WORK/abc.toml"
"$OUTPOST" apply -c "$WORK/abc.toml"
expect_eq "$(ip -n outpost-a -br -4 addr show eth0 | awk '{print $3}')" "10.77.0.2/24" "a keeps its lease"
expect_eq "$(ip -n outpost-b -br -4 addr show eth0 | awk '{print $3}')" "10.77.0.3/24" "b keeps its lease"
expect_eq "$(ip -n outpost-c -br -4 addr show eth0 | awk '{print $3}')" "10.77.0.4/24" "c takes the next free address"
expect_eq "$(ip -n outpost-a -br -6 addr show eth0 scope global | awk '{print $3}')" "fd00:77::2/120" "a keeps its IPv6 lease"
expect_eq "$(ip -n outpost-c -br -6 addr show eth0 scope global | awk '{print $3}')" "fd00:77::4/120" "c takes the next free IPv6 address"

# Removing a group from the config removes exactly its namespace and rules.
"$OUTPOST" apply -c "$WORK/outpost.toml"
wait_for_dump "$WORK/first.json"

"$OUTPOST" teardown -c "$WORK/outpost.toml"
wait_for_dump "$WORK/before.json"
diff -u "$WORK/links-before" <(ip -j link) || fail "ip -j link differs after teardown"
diff -u "$WORK/netns-before" <(ip netns) || fail "ip netns differs after teardown"
diff -u "$WORK/nft-before" <(nft list ruleset) || fail "nf_tables ruleset differs after teardown"
diff -u "$WORK/addr6-before" <(ip -6 addr) || fail "ip -6 addr differs after teardown"
diff -u "$WORK/route6-before" <(ip -6 route) || fail "ip -6 route differs after teardown"
diff -u "$WORK/sysctl6-before" <(ipv6_sysctls) || fail "IPv6 sysctls differ after teardown"
[ ! -e /run/sysctl.d/50-outpost-outpost.conf ] || fail "teardown leaves the sysctl.d file"
echo "lifecycle: idempotent, leases kept, teardown complete"
