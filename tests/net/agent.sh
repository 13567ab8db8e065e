# `outpost run` without Consul: a group's task serves a mapped port; the agent is stopped
# with SIGTERM and with kill -9 and started again under continuous load (zero failed
# requests, the task adopted, never restarted); a killed task is restarted by the restart
# policy; SIGHUP with a broken file changes nothing, with a new group adds it, without it
# removes it; teardown leaves no process, namespace or rule.
source "$(dirname "$0")/lib.sh"
setup_host
CFG=$WORK/outpost.toml
AGENT=
on_exit() {
    local status=$?
    [ "$status" = 0 ] || { echo "--- agent log" >&2; tail -40 "$WORK/agent.log" >&2 || true; }
    [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null
    "$OUTPOST" teardown -c "$CFG" >/dev/null 2>&1 || true
    cleanup
}
trap on_exit EXIT

write_agent_config() { # [extra group]
    cat > "$CFG" <<TOML
[agent]
data_dir = "$WORK/data"
run_dir = "/run/outpost"
cgroup_parent = "outpost-test-$$.slice"
[network]
bridge = "outpost"
subnet = "10.77.0.0/24"
[[group]]
name = "web"
[group.restart]
attempts = 3
interval = "1m"
delay = "200ms"
mode = "delay"
[group.network]
mode = "bridge"
[[group.network.port]]
label = "http"
static = 8080
to = 80
[[group.task]]
name = "server"
command = "/usr/bin/python3"
args = ["$TASK_TOOL", "serve", "tcp", "\${NOMAD_PORT_http}", "web"]
TOML
    if [ "${1:-}" = extra ]; then cat >> "$CFG" <<TOML
[[group]]
name = "extra"
[group.network]
mode = "bridge"
[[group.task]]
name = "server"
command = "/usr/bin/python3"
args = ["$TASK_TOOL", "serve", "tcp", "81", "extra"]
TOML
    fi
}

# running PID: the process exists and is not a zombie waiting for its reaper.
running() { [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat"; }
start_agent() { "$OUTPOST" run -c "$CFG" 2>>"$WORK/agent.log" & AGENT=$!; }
status_json() { "$OUTPOST" status -c "$CFG" --json; }
# task_pid GROUP: the pid of the group's task as the agent reports it (waits for one).
task_pid() {
    for _ in $(seq 100); do
        local p
        p=$(status_json 2>/dev/null | python3 -c "import json,sys
s=json.load(sys.stdin)
print(next((t['pid'] for g in s['groups'] if g['name']=='$1' for t in g['tasks'] if t['pid']), ''))" 2>/dev/null || true)
        [ -n "$p" ] && { echo "$p"; return; }
        sleep 0.05
    done
    fail "no running task in group $1"
}
wait_serving() {
    for _ in $(seq 100); do ask host tcp 192.0.2.1 8080 >/dev/null 2>&1 && return; sleep 0.05; done
    fail "host:8080 does not answer"
}

write_agent_config
start_agent
wait_serving
P1=$(task_pid web)
expect_eq "$(ask host tcp 192.0.2.1 8080)" "web 192.0.2.1" "the task answers through the mapped port"

# Continuous load while the agent goes away and comes back, twice.
python3 "$TOOL" load tcp 192.0.2.1 8080 "$WORK/stop" > "$WORK/load.out" &
LOAD=$!
sleep 0.3
kill -TERM "$AGENT"; wait "$AGENT" || fail "agent exit status on SIGTERM"
running "$P1" || fail "the task died with the agent"
sleep 0.3
start_agent
sleep 0.5
expect_eq "$(task_pid web)" "$P1" "adopted after SIGTERM, not restarted"
grep -q "group web: adopted 1 running task" "$WORK/agent.log" || fail "no adoption logged"
kill -9 "$AGENT"; wait "$AGENT" 2>/dev/null || true
sleep 0.3
start_agent
sleep 0.5
expect_eq "$(task_pid web)" "$P1" "adopted after kill -9, not restarted"
touch "$WORK/stop"; wait "$LOAD"
echo "load across two agent restarts: $(cat "$WORK/load.out")"
grep -q "failed=0" "$WORK/load.out" || fail "requests failed: $(cat "$WORK/load.out")"
grep -q "ok=0 " "$WORK/load.out" && fail "no request was made"

# A crashed task is restarted after the policy's delay.
kill -9 "$P1"
for _ in $(seq 100); do P2=$(task_pid web); [ "$P2" != "$P1" ] && break; sleep 0.05; done
[ "$P2" != "$P1" ] || fail "the killed task was not restarted"
wait_serving
grep -q "task server exited; restarting in 0.2s" "$WORK/agent.log" || fail "restart not logged"

# SIGHUP: a broken file keeps everything; a new group is added; then removed again.
cp "$CFG" "$WORK/good.toml"
echo "this is [not toml" >> "$CFG"
kill -HUP "$AGENT"; sleep 0.5
grep -q "keeping the running configuration" "$WORK/agent.log" || fail "broken reload not reported"
expect_eq "$(task_pid web)" "$P2" "a broken reload leaves the task alone"
write_agent_config extra
kill -HUP "$AGENT"
PX=$(task_pid extra)
expect_eq "$(ask outpost-extra tcp 127.0.0.1 81)" "extra 127.0.0.1" "the added group runs"
expect_eq "$(task_pid web)" "$P2" "adding a group leaves the others alone"
write_agent_config
kill -HUP "$AGENT"
for _ in $(seq 100); do running "$PX" || break; sleep 0.05; done
running "$PX" && fail "the removed group's task still runs"
for _ in $(seq 100); do grep -q "reload: done, 1 group(s)" "$WORK/agent.log" && break; sleep 0.05; done
grep -q "reload: done, 1 group(s)" "$WORK/agent.log" || fail "the reload did not finish"
ip netns list | grep -q outpost-extra && fail "the removed group's namespace is still there"

# teardown stops the agent and the task, and removes everything.
"$OUTPOST" teardown -c "$CFG" 2>>"$WORK/agent.log" || fail "teardown"
AGENT=
running "$P2" && fail "teardown left the task running"
ip netns list | grep -q outpost- && fail "teardown left a namespace"
nft list tables | grep -q outpost && fail "teardown left the nft table"
echo "agent scenario: ok"
