# An attacker's view of the network (docs/trust-model.md; issue 16 items 4 and 5):
# - someone on the LAN who routes the group subnet via the device reaches no group port
#   that is not mapped (the forward filter), while mapped ports still answer;
# - a group's root, with every capability in its own namespace, that sends to 127.0.0.1
#   over the bridge (where route_localnet is on) reaches no host service bound to loopback
#   (the martian drop, CVE-2020-8558), while the host's own 127.0.0.1:8080 mapping works.
# With firewall = "none", outpost adds neither (nor any NAT): that is the admin's choice.
source "$(dirname "$0")/lib.sh"
setup_host
write_config "$WORK/outpost.toml"

# A host service on the port group a maps (as Consul's 8500 would be): apply refuses,
# naming the port, the group and the listener, and changes nothing.
serve host tcp 8080 host-service 127.0.0.1
nft list ruleset > "$WORK/nft-before"; ip -j link > "$WORK/links-before"
if "$OUTPOST" apply -c "$WORK/outpost.toml" 2> "$WORK/refused"; then fail "apply mapped a port a host service listens on"; fi
grep -q 'group "a" port "http" maps host port 8080, which tcp 127.0.0.1:8080 (python3, pid [0-9]*) already listens on' "$WORK/refused" \
    || fail "the refusal names the port, the group and the listener: $(cat "$WORK/refused")"
diff -u "$WORK/nft-before" <(nft list ruleset) || fail "a refused apply changed nf_tables"
diff -u "$WORK/links-before" <(ip -j link) || fail "a refused apply changed links"
expect_eq "$(ask host tcp 127.0.0.1 8080)" "host-service 127.0.0.1" "the host service keeps its port"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

"$OUTPOST" apply -c "$WORK/outpost.toml"

serve outpost-a tcp 80 a
serve outpost-a tcp 81 a-unmapped
serve outpost-b tcp 9000 b
serve host tcp 7777 host-loopback 127.0.0.1

# The LAN routes the group subnet via the device.
ip -n world route add 10.77.0.0/24 via 192.0.2.1
expect_eq "$(ask world tcp 192.0.2.1 8080)" "a 192.0.2.2" "outside -> mapped host:8080 -> a:80"
for target in "10.77.0.2 80" "10.77.0.2 81" "10.77.0.3 9000"; do
    if ask world tcp $target 2>/dev/null; then fail "outside reached group port $target directly"; fi
done
expect_eq "$(ask outpost-a tcp 10.77.0.3 9000)" "b 10.77.0.2" "group a -> group b still works"
expect_eq "$(ask outpost-a tcp 192.0.2.2 7000 2>/dev/null || echo none)" "none" "(no world listener: sanity)"

# Group a's root sends to the host's 127.0.0.1 through the bridge.
ip netns exec outpost-a sh -c '
    sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1
    ip route del local 127.0.0.1 dev lo table local
    ip route del local 127.0.0.0/8 dev lo table local
    ip route add 127.0.0.1/32 via 10.77.0.1 dev eth0'
if ask outpost-a tcp 127.0.0.1 7777 2>/dev/null; then fail "group a reached the host's 127.0.0.1:7777 over the bridge"; fi
expect_eq "$(ask host tcp 127.0.0.1 7777)" "host-loopback 127.0.0.1" "the host's loopback service itself"
expect_eq "$(ask host tcp 127.0.0.1 8080)" "a 10.77.0.1" "host 127.0.0.1:8080 -> a:80 still mapped"
echo "hostile network: the LAN reaches only mapped ports, groups never the host's loopback"
