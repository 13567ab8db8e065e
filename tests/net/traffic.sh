# Real traffic through what `apply` set up: group to group, host and outside to a mapped
# port (tcp and udp), 127.0.0.1, hairpin, and masquerade towards the outside.
source "$(dirname "$0")/lib.sh"
setup_host
write_config "$WORK/outpost.toml"
"$OUTPOST" apply -c "$WORK/outpost.toml"

serve outpost-a tcp 80 a
serve outpost-a udp 80 a
serve outpost-b tcp 9000 b
serve world tcp 7000 world

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
echo "traffic: all paths answered"
