#!/usr/bin/env bash
# slurm-local.sh — a real, single-node Slurm cluster with job accounting on this
# Debian machine, for tests that drive sbatch / squeue / scancel / sacct.
#
#   scripts/slurm-local.sh start    install (if needed) and start everything; idempotent
#   scripts/slurm-local.sh stop     stop every daemon this script starts
#   scripts/slurm-local.sh restart  stop, then start
#   scripts/slurm-local.sh status   daemons, sinfo, and whether sacct answers
#
# Why it looks like this: we run as root in a sandbox/container with no init
# system, so nothing can be left to systemd or /etc/init.d.  The script
#   1. installs the Debian packages (slurm-wlm, slurmdbd, munge, mariadb-server)
#      when any of the binaries is missing;
#   2. writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (the paths the
#      Debian build reads by default, so sbatch/sacct run later by any process
#      find them without SLURM_CONF); every path the daemons write lives under
#      the state dir ($FGIA_SLURM_STATE, default /var/lib/fgia-slurm);
#   3. starts, by hand and in this order: munged (auth), a private MariaDB
#      instance (datadir in the state dir, 127.0.0.1:$FGIA_SLURM_DB_PORT, so it
#      never collides with a system MariaDB), slurmdbd (accounting), then
#      slurmctld and slurmd;
#   4. waits until sinfo shows the node usable and sacct answers, printing the
#      daemon logs if that does not happen within $FGIA_SLURM_TIMEOUT seconds.
# Every start checks each daemon by pid file + /proc/<pid>/comm, so stale pid
# files (e.g. after the processes were killed) are ignored and only what is
# missing gets started.
#
# Exit codes: 0 ok; 1 the cluster did not come up (logs on stderr);
# 3 Slurm cannot be installed here (not root, no apt-get, apt failed) — a single
# line "reason" on stderr, so a caller can print "skipped: <reason>".
#
# Non-default slurm.conf settings, and why:
#   SlurmUser=root / SlurmdUser=root   no slurm service account to manage in a container.
#   SlurmctldHost=<host>(127.0.0.1), NodeAddr=127.0.0.1
#                                      do not depend on the hostname resolving.
#   ProctrackType=proctrack/linuxproc  tracks job processes via /proc; the cgroup
#   TaskPlugin=task/none               plugins need a writable, systemd-delegated
#                                      cgroup tree that a container does not have.
#   SelectType=select/cons_tres + SelectTypeParameters=CR_Core
#                                      allocate single cores rather than whole
#                                      nodes, so N one-CPU jobs run at once on N cores.
#   NodeName ... CPUs=$(nproc) RealMemory=90% of MemTotal
#                                      slurmd drains a node whose configured memory
#                                      exceeds what it measures; stay safely under.
#   JobAcctGatherType=jobacct_gather/linux  per-step usage (MaxRSS, CPU) for sacct.
#   AccountingStorageType=accounting_storage/slurmdbd  job records in MariaDB → sacct works.
#   ReturnToService=2                  a node marked DOWN (e.g. slurmd was killed
#                                      and restarted) returns to service by itself.
#   KillWait=5                         scancel/timeouts SIGKILL 5 s after SIGTERM (default 30).
#   MpiDefault=none                    no PMI plugin needed.
#   MailProg=/bin/true                 no mail(1) in the container.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

STATE="${FGIA_SLURM_STATE:-/var/lib/fgia-slurm}"
DB_PORT="${FGIA_SLURM_DB_PORT:-3307}"
TIMEOUT="${FGIA_SLURM_TIMEOUT:-90}"
CLUSTER=fgia
PARTITION=debug
CONF_DIR=/etc/slurm
SLURM_CONF_FILE="$CONF_DIR/slurm.conf"
DBD_CONF_FILE="$CONF_DIR/slurmdbd.conf"
export SLURM_CONF="$SLURM_CONF_FILE"

RUN="$STATE/run"
LOG="$STATE/log"
DB_DIR="$STATE/mariadb"          # owned by mysql: datadir, socket, pid, log
DB_CNF="$STATE/mariadb.cnf"
DB_SOCK="$DB_DIR/mysqld.sock"
DB_PID="$DB_DIR/mysqld.pid"
DB_PASS_FILE="$STATE/db.pass"
MUNGE_PID=/run/munge/munged.pid
MUNGE_SOCK=/run/munge/munge.socket.2

HOST="$(hostname -s)"

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }
skip() { echo "$*" >&2; exit 3; }   # one line: why Slurm cannot be set up here

# proc_is PID NAME — true if PID is a live (non-zombie) process whose comm is NAME.
proc_is() {
    local pid=$1 name=$2 stat
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# pid_of NAME PIDFILE — print the pid if PIDFILE names a live NAME process.
pid_of() {
    local pid
    pid=$(tr -dc '0-9' 2>/dev/null <"$2") || return 1
    proc_is "$pid" "$1" && echo "$pid"
}

alive() { pid_of "$1" "$2" >/dev/null; }

# stop_daemon NAME PIDFILE [PID] — SIGTERM, wait up to 30 s for the process
# itself to go (daemons remove their pid file before they have finished
# exiting), then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 pid=${3:-} i
    [[ -n $pid ]] || pid=$(pid_of "$name" "$pidfile") || true
    if [[ -z $pid ]] || ! proc_is "$pid" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        proc_is "$pid" "$name" || break
        sleep 0.5
    done
    if proc_is "$pid" "$name"; then
        say "$name did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# wait_for SECONDS DESCRIPTION CMD... — poll CMD every 0.5 s.
wait_for() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "slurm-local: error: timed out after ${secs}s waiting for $what" >&2
    return 1
}

dump_logs() {
    local f
    for f in "$LOG"/*.log "$DB_DIR/mariadb.log" /var/log/munge/munged.log; do
        [[ -s $f ]] || continue
        echo "----- tail of $f -----" >&2
        tail -n 40 "$f" >&2
    done
}

fail() { echo "slurm-local: error: $*" >&2; dump_logs; exit 1; }

# ---------------------------------------------------------------- install
have_binaries() {
    local b
    for b in sbatch squeue sacct sacctmgr sinfo scontrol slurmctld slurmd slurmdbd \
        munged mungekey mariadbd mariadb-install-db mariadb-admin mariadb; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

install_packages() {
    have_binaries && return 0
    [[ $(id -u) -eq 0 ]] || skip "slurm is not installed and installing it needs root"
    command -v apt-get >/dev/null 2>&1 || skip "slurm is not installed and there is no apt-get"
    say "installing slurm-wlm slurmdbd munge mariadb-server (apt-get)"
    # Keep package postinsts from trying to start services: nothing is there to
    # manage them, and we start our own instances below.
    local made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0 aptlog="${TMPDIR:-/tmp}/slurm-local-apt.$$.log"
    {
        apt-get -o DPkg::Lock::Timeout=300 update &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
                install -y --no-install-recommends \
                slurm-wlm slurmdbd munge mariadb-server mariadb-client
    } >"$aptlog" 2>&1 || rc=$?
    [[ -n $made_policy ]] && rm -f /usr/sbin/policy-rc.d
    if [[ $rc -ne 0 ]]; then
        skip "apt-get install of slurm-wlm/slurmdbd/munge/mariadb-server failed (exit $rc; log $aptlog)"
    fi
    rm -f "$aptlog"
    have_binaries || skip "slurm packages installed but some binaries are still missing"
}

# ---------------------------------------------------------------- configs
# write_if_changed FILE MODE — stdin → FILE; returns 0 if the content changed.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    if [[ -f $file ]] && ! grep -q 'Generated by scripts/slurm-local.sh' "$file"; then
        cp -p "$file" "$file.pre-fgia"   # keep someone else's config
    fi
    mv -f "$tmp" "$file"
    return 0
}

CONF_CHANGED=""
write_configs() {
    mkdir -p "$CONF_DIR" "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd"
    local cpus mem_mb
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)

    if write_if_changed "$SLURM_CONF_FILE" 644 <<EOF; then CONF_CHANGED=1; fi
# Generated by scripts/slurm-local.sh — rewritten on every start; edit the script.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

    if [[ ! -s $DB_PASS_FILE ]]; then
        (umask 077 && od -An -tx1 -N12 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
    fi
    local pass
    pass=$(cat "$DB_PASS_FILE")

    if write_if_changed "$DBD_CONF_FILE" 600 <<EOF; then CONF_CHANGED=1; fi
# Generated by scripts/slurm-local.sh — rewritten on every start; edit the script.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF

    # Private MariaDB instance. innodb_use_native_aio=0: sandboxes (gVisor)
    # lack Linux AIO/io_uring. skip-name-resolve: no DNS lookups on connect.
    write_if_changed "$DB_CNF" 644 <<EOF || true
# Generated by scripts/slurm-local.sh
[mysqld]
user=mysql
datadir=$DB_DIR/data
socket=$DB_SOCK
pid-file=$DB_PID
log-error=$DB_DIR/mariadb.log
bind-address=127.0.0.1
port=$DB_PORT
skip-name-resolve
innodb_use_native_aio=0
innodb_buffer_pool_size=128M
innodb_lock_wait_timeout=900
EOF
}

# ---------------------------------------------------------------- daemons
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating munge key"
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown -R munge:munge /etc/munge
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    if alive munged "$MUNGE_PID" || munge_works; then return 0; fi
    # Not running: clear what a killed munged leaves behind.
    rm -f "$MUNGE_PID" "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    say "starting munged"
    runuser -u munge -- munged </dev/null >>"$LOG/munged.out" 2>&1 ||
        fail "munged failed to start"
    wait_for 15 "munged" munge_works || fail "munge does not work"
}

db_ping() { mariadb-admin --socket="$DB_SOCK" -u root ping; }

start_mariadb() {
    install -d -o mysql -g mysql -m 750 "$DB_DIR"
    if [[ ! -d $DB_DIR/data/mysql ]]; then
        say "initialising MariaDB datadir $DB_DIR/data"
        rm -rf "$DB_DIR/data"
        mariadb-install-db --defaults-file="$DB_CNF" --user=mysql \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG/mariadb-install-db.log" 2>&1 ||
            { cat "$LOG/mariadb-install-db.log" >&2; fail "mariadb-install-db failed"; }
    fi
    if ! alive mariadbd "$DB_PID" && ! db_ping >/dev/null 2>&1; then
        rm -f "$DB_PID" "$DB_SOCK"
        say "starting MariaDB on 127.0.0.1:$DB_PORT"
        setsid mariadbd --defaults-file="$DB_CNF" </dev/null >>"$LOG/mariadbd.out" 2>&1 &
        wait_for 60 "MariaDB" db_ping || fail "MariaDB did not start"
    fi
    local pass
    pass=$(cat "$DB_PASS_FILE")
    mariadb --socket="$DB_SOCK" -u root <<EOF || fail "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_works() { sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
    if ! alive slurmdbd "$RUN/slurmdbd.pid"; then
        rm -f "$RUN/slurmdbd.pid"
        say "starting slurmdbd"
        slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1 || fail "slurmdbd failed to start"
    fi
    # First start creates the schema, which takes a few seconds.
    wait_for 60 "slurmdbd" dbd_works || fail "slurmdbd does not answer"
    if ! dbd_works 2>/dev/null | grep -qx "$CLUSTER"; then
        say "registering cluster $CLUSTER in slurmdbd"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed"
    fi
}

start_slurmctld() {
    alive slurmctld "$RUN/slurmctld.pid" && return 0
    rm -f "$RUN/slurmctld.pid"
    say "starting slurmctld"
    slurmctld </dev/null >>"$LOG/slurmctld.out" 2>&1 || fail "slurmctld failed to start"
    wait_for 30 "slurmctld" scontrol ping || fail "slurmctld does not answer"
}

start_slurmd() {
    alive slurmd "$RUN/slurmd.pid" && return 0
    rm -f "$RUN/slurmd.pid"
    say "starting slurmd"
    slurmd </dev/null >>"$LOG/slurmd.out" 2>&1 || fail "slurmd failed to start"
}

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n 1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
sacct_works() { sacct -n -X -S now -E now; }

wait_ready() {
    local deadline=$((SECONDS + TIMEOUT)) resumed=""
    while ((SECONDS < deadline)); do
        if node_ready && sacct_works >/dev/null 2>&1; then return 0; fi
        # A node left drained/down by an earlier run: put it back once.
        if [[ -z $resumed && $((deadline - SECONDS)) -lt $((TIMEOUT - 15)) &&
            "$(node_state)" =~ ^(down|drained|draining|fail) ]]; then
            say "node is $(node_state); resuming it"
            scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
            resumed=1
        fi
        sleep 1
    done
    echo "slurm-local: node state: '$(node_state)'" >&2
    sinfo -N -l >&2 2>&1 || true
    sacct_works >&2 2>&1 || true
    fail "cluster not ready after ${TIMEOUT}s"
}

stop_slurm_daemons() {
    stop_daemon slurmd "$RUN/slurmd.pid"
    stop_daemon slurmctld "$RUN/slurmctld.pid"
    stop_daemon slurmdbd "$RUN/slurmdbd.pid"
}

cmd_start() {
    local t0=$SECONDS
    install_packages
    [[ $(id -u) -eq 0 ]] || skip "starting the local slurm cluster needs root"
    write_configs
    if [[ -n $CONF_CHANGED ]] && { alive slurmctld "$RUN/slurmctld.pid" ||
        alive slurmd "$RUN/slurmd.pid" || alive slurmdbd "$RUN/slurmdbd.pid"; }; then
        say "configuration changed; restarting the slurm daemons"
        stop_slurm_daemons
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_ready
    say "ready in $((SECONDS - t0))s: cluster $CLUSTER, node $HOST ($(node_state)), partition $PARTITION, sacct ok"
}

cmd_stop() {
    stop_slurm_daemons
    # mariadbd shuts down cleanly on SIGTERM; wait on its pid, not its pid file.
    stop_daemon mariadbd "$DB_PID"
    stop_daemon munged "$MUNGE_PID"
    say "stopped"
}

cmd_status() {
    local ok=0 d pid
    for d in "munged:$MUNGE_PID" "mariadbd:$DB_PID" "slurmdbd:$RUN/slurmdbd.pid" \
        "slurmctld:$RUN/slurmctld.pid" "slurmd:$RUN/slurmd.pid"; do
        if pid=$(pid_of "${d%%:*}" "${d#*:}"); then
            echo "${d%%:*}: running (pid $pid)"
        else
            echo "${d%%:*}: not running"
            ok=1
        fi
    done
    if command -v sinfo >/dev/null 2>&1; then
        sinfo 2>&1 || ok=1
    fi
    if command -v sacct >/dev/null 2>&1 && sacct_works >/dev/null 2>&1; then
        echo "sacct: works"
    else
        echo "sacct: NOT working"
        ok=1
    fi
    return $ok
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_stop && cmd_start ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
