# Real traffic through what `apply` set up, on a dual-stack bridge: group to group, host and
# outside to a mapped port (tcp and udp), 127.0.0.1, hairpin, and masquerade towards the
# outside, for IPv4 and for IPv6 (network.subnet_ipv6).
source "$(dirname "$0")/lib.sh"
setup_host
setup_host_ipv6
EXTRA_NETWORK='subnet_ipv6 = "fd00:77::/120"' write_config "$WORK/outpost.toml"
"$OUTPOST" apply -c "$WORK/outpost.toml"

serve outpost-a tcp 80 a
serve outpost-a udp 80 a
serve outpost-b tcp 9000 b
serve world tcp 7000 world
serve world udp 7000 world

# IPv4
expect_eq "$(ask outpost-a tcp 10.77.0.3 9000)" "b 10.77.0.2" "group a -> group b by address"
expect_eq "$(ask host tcp 192.0.2.1 8080)" "a 192.0.2.1" "host address:8080 -> a:80 (tcp)"
expect_eq "$(ask host udp 192.0.2.1 8080)" "a 192.0.2.1" "host address:8080 -> a:80 (udp)"
expect_eq "$(ask world tcp 192.0.2.1 8080)" "a 192.0.2.2" "outside -> host:8080 -> a:80 keeps the client address"
expect_eq "$(ask world udp 192.0.2.1 8080)" "a 192.0.2.2" "outside -> host:8080 -> a:80 (udp)"
expect_eq "$(ask host tcp 127.0.0.1 8080)" "a 10.77.0.1" "host 127.0.0.1:8080 -> a:80 (masqueraded to the bridge)"
expect_eq "$(ask outpost-a tcp 192.0.2.1 8080)" "a 10.77.0.1" "hairpin: a -> host:8080 -> a"
expect_eq "$(ask outpost-b tcp 192.0.2.1 8080)" "a 10.77.0.1" "b -> host:8080 -> a"
expect_eq "$(ask outpost-a tcp 192.0.2.2 7000)" "world 192.0.2.1" "a -> outside is masqueraded to the host address"
if ask outpost-a tcp 10.77.0.3 8080 2>/dev/null; then fail "b has no port 8080: mapping must only apply to host addresses"; fi

# IPv6: the groups' leases, the bridge as their gateway, the ip6 table's mappings.
expect_eq "$(ip -n outpost-a -br -6 addr show eth0 scope global | awk '{print $3}')" "fd00:77::2/120" "a's IPv6 address"
expect_eq "$(ip -n outpost-b -6 route show default | awk '{print $3}')" "fd00:77::1" "b's IPv6 default route"
expect_eq "$(ask outpost-a tcp fd00:77::3 9000)" "b fd00:77::2" "IPv6: group a -> group b by address"
expect_eq "$(ask host tcp 2001:db8::1 8080)" "a 2001:db8::1" "IPv6: host address:8080 -> a:80 (tcp)"
expect_eq "$(ask host udp 2001:db8::1 8080)" "a 2001:db8::1" "IPv6: host address:8080 -> a:80 (udp)"
expect_eq "$(ask world tcp 2001:db8::1 8080)" "a 2001:db8::2" "IPv6: outside -> host:8080 -> a:80 keeps the client address"
expect_eq "$(ask world udp 2001:db8::1 8080)" "a 2001:db8::2" "IPv6: outside -> host:8080 -> a:80 (udp)"
expect_eq "$(ask outpost-a tcp 2001:db8::1 8080)" "a fd00:77::1" "IPv6 hairpin: a -> host:8080 -> a"
expect_eq "$(ask outpost-b tcp 2001:db8::1 8080)" "a fd00:77::1" "IPv6: b -> host:8080 -> a"
expect_eq "$(ask outpost-a tcp 2001:db8::2 7000)" "world 2001:db8::1" "IPv6: a -> outside is masqueraded to the host address"
expect_eq "$(ask outpost-b udp 2001:db8::2 7000)" "world 2001:db8::1" "IPv6: b -> outside (udp) is masqueraded"
if ask outpost-a tcp fd00:77::3 8080 2>/dev/null; then fail "IPv6: b has no port 8080: mapping must only apply to host addresses"; fi
# Linux never routes a packet from ::1 off the host: [::1]:8080 is not mapped (refused at
# once rather than left hanging).
if ask host tcp ::1 8080 2>/dev/null; then fail "IPv6: [::1]:8080 must not be mapped"; fi
# Someone on the LAN who routes the group subnet via the host reaches no unmapped port.
ip -n world -6 route add fd00:77::/120 via 2001:db8::1
if ask world tcp fd00:77::3 9000 2>/dev/null; then fail "IPv6: the forward filter must drop new connections into the bridge"; fi
echo "traffic: all paths answered, IPv4 and IPv6"
