# An attacker's view of the network (DESIGN.md, trust model; issue 16 items 4 and 5):
# - someone on the LAN who routes the group subnet via the device reaches no group port
#   that is not mapped (the forward filter), while mapped ports still answer;
# - a group's root, with every capability in its own namespace, that sends to 127.0.0.1
#   over the bridge (where route_localnet is on) reaches no host service bound to loopback
#   (the martian drop, CVE-2020-8558), while the host's own 127.0.0.1:8080 mapping works.
# With firewall = "none", outpost adds neither (nor any NAT): that is the admin's choice.
source "$(dirname "$0")/lib.sh"
setup_host
write_config "$WORK/outpost.toml"
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
