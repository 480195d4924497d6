#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for tests that need sbatch/srun/scontrol (run as root; Debian 12).
#   scripts/slurm_cluster.sh start STATE_DIR   # installs slurm+munge if absent, configures, starts, waits for the nodes
#   scripts/slurm_cluster.sh stop STATE_DIR    # cancels its jobs, stops only the daemons it started (pid files)
# `start` prints `export SLURM_CONF=STATE_DIR/slurm.conf` and writes the same line to STATE_DIR/env
# (callers: `. STATE_DIR/env`, or set SLURM_CONF themselves). On failure it exits 1 with one line on stderr
# (after the tail of the apt or daemon logs, where there is one).
#
# The nodes, node1 and node2, are two slurmd on 127.0.0.1 (Debian's build runs several per host, `slurmd -N NAME`),
# each offering all the machine's cores, so a job takes one node x 2 tasks or two nodes x 1 task. Their names
# resolve to 127.0.0.1 only inside jobs: the slurmds run in a mount namespace of their own where a copy of
# /etc/hosts with those names is bound over the file (the machine's /etc/hosts is never touched; the namespace
# ends with its last process). Jobs therefore see what a real cluster gives them: SLURM_NODEID 0/1, a node list
# `node[1-2]` whose first name is the master address, and a TCP connection between the nodes' processes.
set -euo pipefail
die() { echo "slurm_cluster: $*" >&2; exit 1; }
[[ $# == 2 && ($1 == start || $1 == stop) ]] || die "usage: $0 start|stop STATE_DIR"
[[ $(id -u) == 0 ]] || die "must run as root (the daemons run as root, and munged/apt need it)"
STATE=$(realpath -m "$2")
CONF=$STATE/slurm.conf
export SLURM_CONF=$CONF

alive() { [[ -s $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

stop_daemon() {  # name: TERM the pid we recorded, then KILL after 10 s; a pid reused by another program is left alone
  local pid
  alive "$1" || { rm -f "$STATE/$1.pid"; return 0; }
  pid=$(cat "$STATE/$1.pid")
  [[ $(ps -o comm= -p "$pid") == "${1%%-*}" ]] || { rm -f "$STATE/$1.pid"; return 0; }
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$STATE/$1.pid"
}

if [[ $1 == stop ]]; then
  # Cancel what is still queued or running first: stopping slurmd does not end the slurmstepd of running jobs.
  if alive slurmctld && [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
    scancel --full $(squeue -h -o %i) 2>/dev/null || true
    for _ in $(seq 50); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  # In parallel: each takes a second or two to exit.
  stop_daemon slurmd-node1 & stop_daemon slurmd-node2 & stop_daemon slurmctld & wait
  stop_daemon munged
  exit 0
fi

# start
# slurmd names each step's unix socket SlurmdSpoolDir/NODE_JOBID.STEPID, and sun_path holds 107 bytes.
(( ${#STATE} <= 56 )) || die "STATE_DIR is too long for slurmd's socket paths (${#STATE} > 56 chars): $STATE"
mkdir -p "$STATE"
if alive slurmctld && alive slurmd-node1 && alive slurmd-node2; then
  echo "slurm_cluster: already running from $STATE" >&2
  echo "export SLURM_CONF=$CONF"; exit 0
fi
# The survivors of a half-dead cluster would hold the ports.
stop_daemon slurmd-node1; stop_daemon slurmd-node2; stop_daemon slurmctld
# Another cluster on this machine would hold them too, and sinfo below would ask it instead of ours.
for port in 6817 6818 6819; do
  ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "port $port is in use (another slurm is running here)"
done

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  log=$STATE/apt.log
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      slurmctld slurmd slurm-client munge; } >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "apt-get install failed"; }
fi

# munge authenticates every slurm RPC. A munged that already answers (the system's) is reused and never stopped.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 755 /run/munge /var/lib/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  # As the munge user, like the packaged service; --force gets past a stale socket left by a killed munged.
  # It forks and writes /run/munge/munged.pid, which we copy: that pid is what `stop` may end.
  runuser -u munge -- munged --force || die "munged failed to start (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$STATE/munged.pid"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null 2>&1 || die "munged started but does not answer"
fi

mkdir -p "$STATE/state" "$STATE/spool-node1" "$STATE/spool-node2"
# Below free memory, or the nodes drain; each node offers 40% (both are this machine).
mem_mb=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.4)}' /proc/meminfo)
cat >"$CONF" <<EOF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# No cgroups: linuxproc tracks processes by parentage, task/none binds nothing, so no cgroup.conf is read.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$STATE/state
# %n: each node's own (two slurmd on one host).
SlurmdSpoolDir=$STATE/spool-%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd-%n.log
# The nodes are configured as below whatever slurmd finds (both offer all of this machine's cores).
SlurmdParameters=config_overrides
# A node that was down (e.g. slurmd restarted) comes back by itself; batch jobs may be requeued.
ReturnToService=2
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (default 30).
KillWait=5
# A requeued job stays pending until requeue + cred_expire + 1 s (default 120, minimum 5); the job and step
# credentials that cred_expire also bounds are checked within a second of being issued on one node.
AuthInfo=cred_expire=10
# Then it waits for the main scheduler's next pass (default every 60 s; backfill skips it, nothing changed).
SchedulerParameters=sched_interval=2
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=6818 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=6819 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
EOF

# -c: start from an empty job queue, whatever a previous (perhaps killed) run left in StateSaveLocation.
slurmctld -c -f "$CONF" || die "slurmctld failed to start (see $STATE/slurmctld.log)"
{ cat /etc/hosts; echo "127.0.0.1 node1 node2"; } >"$STATE/hosts"
# The slurmds (and so every job step) in a mount namespace where the nodes' names resolve; -N names each node.
unshare --mount --propagation private -- sh -ec '
  mount --bind "$1/hosts" /etc/hosts
  slurmd -N node1 -f "$1/slurm.conf" || { echo "slurmd node1 failed (see $1/slurmd-node1.log)" >&2; exit 1; }
  slurmd -N node2 -f "$1/slurm.conf" || { echo "slurmd node2 failed (see $1/slurmd-node2.log)" >&2; exit 1; }
' sh "$STATE" || die "slurmd failed to start"
for _ in $(seq 60); do
  [[ $(sinfo -h -o %t 2>/dev/null | sort -u) == idle ]] && break; sleep 0.5
done
if [[ $(sinfo -h -o %t 2>/dev/null | sort -u) != idle ]]; then
  tail -n 20 "$STATE"/*.log >&2 || true
  die "nodes not idle after 30 s: $(sinfo -N -h -o '%N %t %E' 2>&1 | tr '\n' ';')"
fi
echo "export SLURM_CONF=$CONF" | tee "$STATE/env"
