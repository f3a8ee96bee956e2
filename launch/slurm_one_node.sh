#!/usr/bin/env bash
# A one-node Slurm on this machine, for trying launch/slurm.sbatch by hand and
# for CI's Slurm tests (tests/test_slurm.py). Idempotent: run it again and it
# only starts what is not running. Needs root and Debian's slurm-wlm and
# munge (`apt-get install -y slurm-wlm munge`).
#
#   sudo launch/slurm_one_node.sh          # then: sinfo; sbatch ...
#
# The node declares SLURM_CPUS CPUs (default 8) whatever the machine has, so
# a 2-core machine holds a job of several tasks; munge authenticates with a
# key made here; no cgroups (proctrack/linuxproc, task/none). Requeued jobs
# wait cred_expire seconds before they start again: 120 s by Slurm's
# default, 10 s here so that the tests do not wait.
set -euo pipefail

CPUS=${SLURM_CPUS:-8}
NODE=$(hostname -s)
CONF_DIR=/etc/slurm
SPOOL=/var/spool/slurm
LOGS=/var/log/slurm

for tool in slurmctld slurmd munged sinfo; do
  command -v "$tool" >/dev/null || {
    echo "slurm_one_node: no $tool: apt-get install -y slurm-wlm munge" >&2
    exit 2
  }
done
mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOGS" /etc/munge /run/munge \
  /var/lib/munge /var/log/munge

if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- munged
fi

cat > "$CONF_DIR/slurm.conf.new" <<CONF
ClusterName=mnistdist
SlurmctldHost=$NODE
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# Pending jobs looked at every 2 s, not 60: a requeued job starts soon
# after cred_expire.
SchedulerParameters=sched_interval=2
ReturnToService=2
JobRequeue=1
# Ports that srun --resv-ports hands a step, unique per node while it runs:
# launch/slurm.sbatch builds the cluster's addresses from them.
MpiParams=ports=12000-12999
KillWait=30
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"; then
  mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
  # Restarted on the new settings, once the old ones have saved and gone.
  pkill -x slurmctld || true
  pkill -x slurmd || true
  for _ in $(seq 30); do
    pgrep -x 'slurmctld|slurmd' >/dev/null || break
    sleep 1
  done
else
  rm "$CONF_DIR/slurm.conf.new"
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
  state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*)
      echo "slurm_one_node: $NODE is $state ($CPUS CPUs)"
      exit 0 ;;
    down*|drain*)
      scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm_one_node: $NODE did not come up (sinfo: ${state:-no answer});" \
  "see $LOGS" >&2
exit 1
