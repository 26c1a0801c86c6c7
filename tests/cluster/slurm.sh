#!/usr/bin/env bash
# A real single-node Slurm for the cluster tests (see tests/cluster/README.md and
# /work/shared/reference/slurm-ci.md). Debian 12, as root, no systemd.
#
#   tests/cluster/slurm.sh install   apt-get the packages if missing (idempotent)
#   tests/cluster/slurm.sh start     write slurm.conf and slurmdbd.conf, start munged, MariaDB,
#                                    slurmdbd, slurmctld, slurmd; wait for idle (idempotent)
#   tests/cluster/slurm.sh stop      stop the daemons by their PID files
#   tests/cluster/slurm.sh status    exit 0 when the node is up, print its state
#   tests/cluster/slurm.sh restart   stop, then start
#
# Environment:
#   KDFLOW_SLURM_RUN      run directory (state, spool, logs, PID files)   [/tmp/kdflow-slurm]
#   KDFLOW_SLURM_CPUS     CPUs the node offers                            [nproc]
#   KDFLOW_SLURM_MEM_MB   RealMemory of the node in MB                    [MemTotal]
#   KDFLOW_SLURM_TIMEOUT  seconds to wait for the node to become idle     [60]
#   KDFLOW_SLURM_DB_PORT  TCP port of the accounting MariaDB (127.0.0.1)  [16819]
set -euo pipefail

RUN=${KDFLOW_SLURM_RUN:-/tmp/kdflow-slurm}
CONF=/etc/slurm/slurm.conf
# Accounting (sacct): slurmdbd in front of a MariaDB of our own (datadir, socket, PID file and
# log under $RUN, listening on 127.0.0.1 only), never the system's MariaDB service.
DBD_CONF=/etc/slurm/slurmdbd.conf
DB_DIR=$RUN/mysql
DB_SOCK=$RUN/mysqld.sock
DB_PORT=${KDFLOW_SLURM_DB_PORT:-16819}
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=kdflow-ci # a throwaway database on 127.0.0.1; slurmdbd.conf is mode 600 anyway
CLUSTER=ci
TIMEOUT=${KDFLOW_SLURM_TIMEOUT:-60}
SBIN=/usr/sbin
# Partitions: PBS queue names. workq is the default queue; gpu_1 is the CHPC queue name.
QUEUES=(workq gpu_1)

log() { printf 'slurm.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

installed() {
	[[ -x $SBIN/slurmctld && -x $SBIN/slurmd && -x $SBIN/munged && -x $SBIN/slurmdbd &&
		-x $SBIN/mariadbd ]] &&
		command -v sbatch >/dev/null && command -v scontrol >/dev/null &&
		command -v sacctmgr >/dev/null && command -v mariadb-install-db >/dev/null &&
		command -v mariadb-admin >/dev/null &&
		command -v mariadb >/dev/null
}

cmd_install() {
	if installed; then
		return 0
	fi
	[[ $(id -u) -eq 0 ]] || die "installing Slurm needs root (apt-get)"
	log "installing ${PACKAGES[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	# (the packages' own service starts are refused here: no systemd; `start` runs the daemons)
	apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
	installed || die "packages installed but the daemons are still missing"
}

pid_alive() { # pidfile
	local pid
	[[ -s $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n1 || true; }

is_up() {
	pid_alive "$RUN/slurmctld.pid" && pid_alive "$RUN/slurmd.pid" || return 1
	case $(node_state) in
	idle | mixed | allocated | completing) return 0 ;;
	*) return 1 ;;
	esac
}

write_conf() {
	local ncpu mem_mb defmem
	ncpu=${KDFLOW_SLURM_CPUS:-$(nproc)}
	mem_mb=${KDFLOW_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)}
	defmem=$((mem_mb / ncpu))
	mkdir -p "$RUN/state" "$RUN/spool" "$RUN/log" "$RUN/tmp" "$RUN/aux" /etc/slurm \
		"$RUN/mom_priv/jobs" "$RUN/mom_priv/spool" "$RUN/mom_priv/undelivered"
	chmod 1777 "$RUN/tmp" "$RUN/aux" "$RUN/mom_priv/jobs" "$RUN/mom_priv/spool"
	# Epilog = the end of a job on PBS's mom, for the qsub shim's jobs: deliver the spooled
	# stdout/stderr to their final paths (PBS copies them back when the job ends; what cannot
	# be delivered stays in mom_priv/undelivered), remove the job's TMPDIR, script copy and
	# node file. It must always exit 0: a failing Epilog drains the node.
	{
		printf '#!/bin/sh\n# Written by tests/cluster/slurm.sh\nR=%q\n' "$RUN"
		cat <<'EOF'
id="${SLURM_JOB_ID}.pbs-ci"
deliver() {
	[ -f "$1" ] || return 0
	if [ -n "$2" ] && cp -f "$1" "$2" 2>/dev/null; then
		rm -f "$1"
	else
		mv -f "$1" "$R/mom_priv/undelivered/" 2>/dev/null
	fi
}
if [ -f "$R/mom_priv/spool/$id.dest" ]; then
	{
		read -r ou
		read -r er
	} <"$R/mom_priv/spool/$id.dest"
	deliver "$R/mom_priv/spool/$id.OU" "$ou"
	deliver "$R/mom_priv/spool/$id.ER" "$er"
	rm -f "$R/mom_priv/spool/$id.dest"
fi
rm -rf "$R/tmp/pbs.$id" "$R/mom_priv/jobs/$id.SC" "$R/aux/$id" 2>/dev/null
exit 0
EOF
	} >"$RUN/epilog.sh"
	chmod 755 "$RUN/epilog.sh"
	local tmp
	tmp=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
	cat >"$tmp" <<EOF
# Written by tests/cluster/slurm.sh for the kdflow cluster tests. Run dir: $RUN
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=2
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$RUN/log/slurmctld.log
SlurmdLogFile=$RUN/log/slurmd.log
Epilog=$RUN/epilog.sh
MinJobAge=600
KillWait=5
OverTimeLimit=0
InactiveLimit=0
EnforcePartLimits=ALL
MaxJobCount=100000
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem_mb State=UNKNOWN
PartitionName=workq Nodes=localhost Default=YES MaxTime=02:00:00 DefMemPerCPU=$defmem State=UP
PartitionName=gpu_1 Nodes=localhost Default=NO MaxTime=12:00:00 DefMemPerCPU=$defmem State=UP
EOF
	chmod 644 "$tmp"
	write_dbd_conf
	if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
		rm -f "$tmp"
		return 1 # unchanged
	fi
	mv -f "$tmp" "$CONF"
}

start_munge() {
	if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
		return 0 # a munged is already serving the default socket
	fi
	mkdir -p /run/munge /var/lib/munge /var/log/munge
	chown munge:munge /run/munge /var/lib/munge /var/log/munge
	chmod 755 /run/munge
	if [[ ! -s /etc/munge/munge.key ]]; then
		mungekey --create --keyfile=/etc/munge/munge.key
		chown munge:munge /etc/munge/munge.key
		chmod 400 /etc/munge/munge.key
	fi
	rm -f "$RUN/munged.pid"
	touch "$RUN/munged.pid"
	chown munge:munge "$RUN/munged.pid"
	# 9>&-: the daemons must not inherit the lock on $RUN/.lock
	runuser -u munge -- "$SBIN/munged" --pid-file="$RUN/munged.pid" --force 9>&-
	local i
	for i in $(seq 50); do
		munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "munged did not come up (see /var/log/munge/munged.log)"
}

DBD_CONF_CHANGED=0

write_dbd_conf() { # sets DBD_CONF_CHANGED=1 when slurmdbd.conf was (re)written
	local tmp
	tmp=$(mktemp /etc/slurm/.slurmdbd.conf.XXXXXX) # mode 600, owned by root = SlurmUser
	cat >"$tmp" <<EOF
# Written by tests/cluster/slurm.sh for the kdflow cluster tests. Run dir: $RUN
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$RUN/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
	chmod 600 "$tmp"
	if [[ -f $DBD_CONF ]] && cmp -s "$tmp" "$DBD_CONF"; then
		rm -f "$tmp"
		return 0
	fi
	mv -f "$tmp" "$DBD_CONF"
	DBD_CONF_CHANGED=1
}

db_ping() { mariadb-admin --no-defaults --socket="$DB_SOCK" -u root ping >/dev/null 2>&1; }

start_db() {
	if ! pid_alive "$RUN/mariadbd.pid"; then
		if [[ ! -d $DB_DIR/mysql ]]; then
			rm -rf "$DB_DIR"
			mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR" \
				--auth-root-authentication-method=socket --skip-test-db \
				>"$RUN/log/mariadb-install.log" 2>&1 ||
				die "mariadb-install-db failed (see $RUN/log/mariadb-install.log)"
		fi
		rm -f "$RUN/mariadbd.pid" "$DB_SOCK"
		# mariadbd does not detach: run it in its own session, nothing inherited but the log
		setsid "$SBIN/mariadbd" --no-defaults --user=root --datadir="$DB_DIR" \
			--socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
			--pid-file="$RUN/mariadbd.pid" --log-error="$RUN/log/mariadb.log" \
			--innodb-lock-wait-timeout=900 </dev/null >>"$RUN/log/mariadb.log" 2>&1 9>&- &
	fi
	local i
	for i in $(seq 300); do
		db_ping && break
		((i < 300)) || die "MariaDB did not come up (see $RUN/log/mariadb.log)"
		sleep 0.1
	done
	mariadb --no-defaults --socket="$DB_SOCK" -u root -e "
		CREATE DATABASE IF NOT EXISTS $DB_NAME;
		CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
		GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';" ||
		die "could not create the accounting database"
}

dbd_answers() { sacctmgr -n -P list cluster format=cluster 2>/dev/null; }

start_dbd() {
	if [[ $DBD_CONF_CHANGED == 1 ]] && pid_alive "$RUN/slurmdbd.pid"; then
		log "slurmdbd.conf changed: restarting slurmdbd"
		stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
	fi
	if ! pid_alive "$RUN/slurmdbd.pid"; then
		rm -f "$RUN/slurmdbd.pid"
		"$SBIN/slurmdbd" 9>&- || {
			tail -n 20 "$RUN/log/slurmdbd.log" >&2 || true
			die "slurmdbd failed to start"
		}
	fi
	# sacctmgr reads slurm.conf (already pointing at slurmdbd) and asks slurmdbd
	local i clusters
	for i in $(seq 300); do
		clusters=$(dbd_answers) && break
		((i < 300)) || {
			tail -n 20 "$RUN/log/slurmdbd.log" >&2 || true
			die "slurmdbd does not answer (see $RUN/log/slurmdbd.log)"
		}
		sleep 0.1
	done
	if ! grep -qx "$CLUSTER" <<<"$clusters"; then
		# also creates the account `root` with the user root in it: root's jobs get account root
		sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
		log "registered cluster $CLUSTER with slurmdbd"
	fi
}

# What the running slurmctld uses (changing AccountingStorageType needs a slurmctld restart).
ctld_accounting() { scontrol show config 2>/dev/null | awk '$1 == "AccountingStorageType" {print $3}'; }

accounting_up() {
	pid_alive "$RUN/mariadbd.pid" && pid_alive "$RUN/slurmdbd.pid" &&
		[[ $(ctld_accounting) == accounting_storage/slurmdbd ]]
}

log_tail() {
	local f
	for f in "$RUN/log/slurmctld.log" "$RUN/log/slurmd.log" "$RUN/log/slurmdbd.log"; do
		[[ -f $f ]] && {
			echo "--- tail $f" >&2
			tail -n 20 "$f" >&2
		}
	done
	sinfo -R 2>/dev/null >&2 || true
}

cmd_start() {
	mkdir -p "$RUN"
	exec 9>"$RUN/.lock"
	flock 9
	if is_up && accounting_up; then
		# Up already: bring a changed slurm.conf / epilog (a newer slurm.sh) into effect.
		if [[ $(id -u) -eq 0 ]] && write_conf; then
			scontrol reconfigure && log "slurm.conf changed: reconfigured"
		fi
		if [[ $DBD_CONF_CHANGED == 1 ]]; then
			start_dbd
		fi
		log "already up (run dir $RUN)"
		return 0
	fi
	installed || die "Slurm or its accounting is not installed: run '$0 install' (as root)"
	[[ $(id -u) -eq 0 ]] || die "starting Slurm needs root"
	if ! pid_alive "$RUN/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q ' is UP'; then
		die "another slurmctld is running (not the one of run dir $RUN): stop it first"
	fi
	local t0=$SECONDS changed=0 slurmd_kept=0
	write_conf && changed=1
	start_munge
	start_db
	start_dbd
	if pid_alive "$RUN/slurmctld.pid" && [[ $(ctld_accounting) != accounting_storage/slurmdbd ]]; then
		# running without accounting (an older slurm.sh started it): restart slurmctld only;
		# its state is saved, slurmd and the running jobs carry on
		log "restarting slurmctld to turn accounting on (jobs keep running)"
		stop_pidfile slurmctld "$RUN/slurmctld.pid"
	fi
	if ! pid_alive "$RUN/slurmctld.pid"; then
		rm -f "$RUN/slurmctld.pid"
		# a cold start (slurmd down too: the machine's processes were ended) begins with an
		# empty queue (-c): jobs saved by an earlier session must not run into this one
		local clear=()
		pid_alive "$RUN/slurmd.pid" || clear=(-c)
		"$SBIN/slurmctld" "${clear[@]}" 9>&- || {
			log_tail
			die "slurmctld failed to start"
		}
	fi
	if pid_alive "$RUN/slurmd.pid"; then
		slurmd_kept=1
	else
		rm -f "$RUN/slurmd.pid"
		"$SBIN/slurmd" -N localhost 9>&- || {
			log_tail
			die "slurmd failed to start"
		}
	fi
	local deadline=$((SECONDS + TIMEOUT)) state=
	while ((SECONDS < deadline)); do
		state=$(node_state)
		case $state in
		idle | mixed | allocated | completing)
			if ((changed && slurmd_kept)); then
				# the slurmd that kept running still has the old slurm.conf (Epilog, ...)
				scontrol reconfigure && log "slurm.conf changed: reconfigured"
			fi
			log "up: node localhost $state, accounting on, after $((SECONDS - t0)) s (run dir $RUN)"
			return 0
			;;
		esac
		sleep 0.5
	done
	log_tail
	die "node localhost not idle after ${TIMEOUT}s (state: '${state:-none}')"
}

stop_pidfile() { # name pidfile
	local pid i
	pid_alive "$2" || {
		rm -f "$2"
		return 0
	}
	pid=$(<"$2")
	kill "$pid" 2>/dev/null || true
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$1 ($pid) did not stop, sending SIGKILL"
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$2"
}

cmd_stop() {
	mkdir -p "$RUN"
	exec 9>"$RUN/.lock"
	flock 9
	stop_pidfile slurmd "$RUN/slurmd.pid"
	stop_pidfile slurmctld "$RUN/slurmctld.pid"
	stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
	stop_pidfile mariadbd "$RUN/mariadbd.pid"
	stop_pidfile munged "$RUN/munged.pid" # only a munged this script started
	log "stopped"
}

cmd_status() {
	if is_up; then
		local acct="accounting off"
		accounting_up && acct="accounting on"
		echo "up: node localhost $(node_state), $acct (run dir $RUN)"
		return 0
	fi
	echo "down (run dir $RUN)"
	return 1
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart)
	cmd_stop
	cmd_start
	;;
status) cmd_status ;;
*)
	echo "usage: $0 install|start|stop|restart|status" >&2
	exit 2
	;;
esac
