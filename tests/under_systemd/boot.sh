#!/bin/sh
# PID 1 of a fresh pid namespace (unshare --pid --fork --mount --net --uts --ipc --cgroup), in a
# private mount namespace: build a root for systemd, pivot into it, exec systemd as the
# namespace's init. Every mount made here belongs to this mount namespace and vanishes with it.
#   boot.sh BASE VENV FILES TARGET
# BASE: an empty host directory (a tmpfs goes on it); VENV: the prepared venv, bound read-only
# at /opt/relayq; FILES: a tree copied over the new root before systemd starts (units, config,
# the target); TARGET: the unit systemd boots into.
set -eu
base=$1 venv=$2 files=$3 target=$4
say() { echo "boot.sh: $*" >&2; }

# unshare makes the new mount namespace private already; said again so no mount below can
# propagate back to the host whatever unshare's default.
mount --make-rprivate /

# Writes land on a tmpfs above the host's root: systemd and the tests change /etc, /var and
# /opt freely and the host's files stay untouched.
mount -t tmpfs -o mode=0755 relayq-systemd "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
r=$base/root

# A proc of this pid namespace; /proc/sys read-only as in any container, so no sysctl of the
# host is changed from inside.
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount --bind "$r/proc/sys" "$r/proc/sys"
mount -o remount,bind,ro "$r/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
# cgroup2 of this cgroup namespace: its root is the directory the harness made for us, so
# systemd's slices and scopes land below it and nowhere else in the host's tree.
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$r/sys/fs/cgroup"

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$r/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/tmp"
# /dev: only the basic character devices, bound from the host (mknod would need a devices
# cgroup rule the host may not give).
mount -t tmpfs -o mode=0755,nosuid tmpfs "$r/dev"
for node in null zero full random urandom tty; do
  touch "$r/dev/$node"
  mount --bind "/dev/$node" "$r/dev/$node"
done
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
ln -s /proc/self/fd/0 "$r/dev/stdin"
ln -s /proc/self/fd/1 "$r/dev/stdout"
ln -s /proc/self/fd/2 "$r/dev/stderr"

# The product, installed once per test session the README's way (a venv at /opt/relayq):
# read-only here, so no test can change what the next namespace runs.
mkdir -p "$r/opt/relayq"
mount --bind "$venv" "$r/opt/relayq"
mount -o remount,bind,ro "$r/opt/relayq"

# What the harness installs before boot, so systemd sees it at its first unit load.
cp -a --remove-destination "$files/." "$r/"

cd "$r"
mkdir .oldroot
pivot_root . .oldroot
# Lazily: the host's submounts below the old root are still busy with nothing we need.
umount -l /.oldroot
rmdir /.oldroot

# `container` tells systemd it is a container's init: no hardware, no kernel module loading,
# poweroff ends the pid namespace.
export container=relayq-test
say "exec systemd"
exec /lib/systemd/systemd --system --unit="$target"
