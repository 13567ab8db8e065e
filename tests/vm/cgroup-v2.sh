#!/bin/bash
# Runs outpost on a host with cgroup v2 and its controllers, which the machines here (and
# CI) are not (theirs is the hybrid layout): the distribution's kernel (Debian's
# linux-image-amd64) under qemu's emulation (nested KVM does not boot here), booted into a
# small initramfs that mounts only cgroup v2, then `outpost run` with a task past its
# memory_max beside a calm exec task, `status` and `teardown`. tests/cgroup_v2.rs runs it
# and checks the guest's lines.
# Usage: cgroup-v2.sh OUTPOST_STATIC_BINARY. Prints the guest's "vm:" lines; exit 0 when the
# guest printed "vm: done". About 90 s.
set -euo pipefail
OUTPOST=$1
KERNEL=$(ls /boot/vmlinuz-* | sort -V | tail -1)
WORK=$(mktemp -d -p /var/tmp)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,etc,proc,sys,dev,run,tmp,new}
cp /bin/busybox "$ROOT/bin/"
# BusyBox is dynamically linked on Debian: its libraries come along.
for lib in $(ldd /bin/busybox | grep -o '/[^ ]*'); do cp --parents "$lib" "$ROOT"; done
for applet in sh cat cp grep head tr sleep mount umount mkdir seq ls poweroff switch_root sed; do
    ln -s busybox "$ROOT/bin/$applet"
done
cp "$OUTPOST" "$ROOT/bin/outpost"
cat > "$ROOT/etc/outpost.toml" <<'TOML'
[agent]
data_dir = "/var/lib/outpost"
[[group]]
name = "mem"
[group.restart]
attempts = 5
delay = "1s"
[[group.task]]
name = "hog"
command = "/bin/sh"
args = ["-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 100"]
[group.task.resources]
cpu = 200
memory = 16
memory_max = 32
[[group.task]]
name = "calm"
command = "/bin/sh"
args = ["-c", "echo \"calm sees $(ls -d /alloc /local /secrets /tmp | grep -c .) dirs\"; exec sleep 1000"]
TOML
# pivot_root cannot leave the initramfs's rootfs: the guest first moves to a tmpfs root.
cat > "$ROOT/init" <<'SH'
#!/bin/sh
mount -t tmpfs -o mode=0755 tmpfs /new
cp -a /bin /etc /lib* /init2 /new/ 2>/dev/null
mkdir -p /new/proc /new/sys /new/dev /new/run /new/tmp /new/var/lib
exec switch_root /new /init2
SH
cat > "$ROOT/init2" <<'SH'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "vm: controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
outpost run -c /etc/outpost.toml 2>/tmp/agent.log &
for i in $(seq 300); do
    grep -q "killed: out of memory" /tmp/agent.log && break
    sleep 0.1
done
grep "cgroups:\|out of memory\|WARN\|ERROR" /tmp/agent.log | sed 's/^/vm: log: /' | head -6
dir=/sys/fs/cgroup/outpost.slice/mem.slice/hog.scope
for f in memory.max memory.low memory.swap.max cpu.weight; do echo "vm: hog $f $(cat $dir/$f)"; done
echo "vm: hog memory.events $(grep oom_kill $dir/memory.events)"
echo "vm: calm memory.max $(cat /sys/fs/cgroup/outpost.slice/mem.slice/calm.scope/memory.max)"
echo "vm: subtree_control $(cat /sys/fs/cgroup/outpost.slice/mem.slice/cgroup.subtree_control)"
echo "vm: calm stdout: $(cat /run/outpost/alloc/mem/alloc/logs/calm.stdout.0)"
sleep 1.5
outpost status -c /etc/outpost.toml mem | sed 's/^/vm: status: /'
outpost teardown -c /etc/outpost.toml 2>>/tmp/agent.log
echo "vm: after teardown: $(ls /sys/fs/cgroup | grep -c outpost) outpost cgroups"
echo "vm: done"
poweroff -f
SH
chmod +x "$ROOT/init" "$ROOT/init2"
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.gz"
CONSOLE=${VM_CONSOLE:-$WORK/console}
# The emulated boot takes about 30 s here. Once in a while (one CI run in many) the guest
# never reaches its init, printing nothing before the timeout; outpost has not run then,
# so the boot is tried once more.
for attempt in 1 2; do
    timeout "${VM_TIMEOUT:-180}" qemu-system-x86_64 ${VM_ACCEL:--accel tcg} -m 512 -smp 2 -nographic -no-reboot \
        -kernel "$KERNEL" -initrd "$WORK/initrd.gz" \
        -append "console=ttyS0 panic=-1 ${VM_QUIET-quiet}" </dev/null | tr -d '\r' >"$CONSOLE" || true
    grep -q '^vm: ' "$CONSOLE" && break
    echo "cgroup-v2.sh: boot $attempt reached no init in ${VM_TIMEOUT:-180}s; the console ends:" >&2
    tail -5 "$CONSOLE" >&2
done
grep '^vm: ' "$CONSOLE" || true
grep -q '^vm: done' "$CONSOLE"
