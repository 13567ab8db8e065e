# kill -9 during an apply of many groups, at several points, then apply again: the result
# equals a clean apply; and teardown still removes everything.
source "$(dirname "$0")/lib.sh"
setup_host
{
    printf '[agent]\ndata_dir = "%s/data"\nrun_dir = "/run/outpost"\ncgroup_parent = "outpost-test-'"$$"'.slice"\n[network]\nsubnet = "10.77.0.0/24"\n' "$WORK"
    for i in $(seq 1 12); do
        printf '[[group]]\nname = "g%s"\n[group.network]\nmode = "bridge"\n[[group.network.port]]\nlabel = "p"\nstatic = %s\n[[group.task]]\nname = "t"\ncommand = "/bin/true"\n' "$i" $((9000 + i))
    done
} > "$WORK/many.toml"
dump > "$WORK/before.json"
"$OUTPOST" apply -c "$WORK/many.toml"
dump > "$WORK/clean.json"
"$OUTPOST" teardown -c "$WORK/many.toml"
wait_for_dump "$WORK/before.json"

killed=0
for delay in 0.005 0.01 0.02 0.03 0.05 0.08 0.12; do
    "$OUTPOST" apply -c "$WORK/many.toml" 2>/dev/null &
    pid=$!
    sleep "$delay"
    if kill -9 "$pid" 2>/dev/null; then killed=$((killed + 1)); fi
    wait "$pid" 2>/dev/null || true
    "$OUTPOST" apply -c "$WORK/many.toml" 2>/dev/null
    dump > "$WORK/after.json"
    diff -u "$WORK/clean.json" "$WORK/after.json" || fail "apply after kill -9 at ${delay}s differs from a clean apply"
    "$OUTPOST" teardown -c "$WORK/many.toml" 2>/dev/null
    wait_for_dump "$WORK/before.json"
done
[ "$killed" -gt 0 ] || fail "no apply was still running when killed; the test did not interrupt anything"
echo "interrupted: $killed applies killed mid-way, each repaired by the next apply"
