#!/usr/bin/env bash
# A real single-node OpenPBS (PBS Professional's open-source edition) for the PBS tests: the
# PBS executor is tested against this server, never against a model of it. Debian 12, as root,
# no systemd. Facts behind every step: ../shared/reference/openpbs/README.md.
#
#   tests/cluster/openpbs.sh install   build OpenPBS from the vendored source into /opt/pbs, once
#                                      per commit (a build marker records it; ~3 min on 2 cores)
#   tests/cluster/openpbs.sh source    print the OpenPBS source it builds (the vendored one, checked)
#   tests/cluster/openpbs.sh start     configure one node (job history on, `$enforce mem`, ngpus,
#                                      a test user, flatuid) and start it; wait until it is free
#   tests/cluster/openpbs.sh stop      stop every PBS daemon
#   tests/cluster/openpbs.sh status    exit 0 when the server answers and the node is up
#   tests/cluster/openpbs.sh venv      the Python environment the test user runs kdflow with:
#                                      Debian's python3, the project's dependencies (made once
#                                      per pyproject.toml; the tests install kdflow itself)
#
# Environment:
#   KDFLOW_OPENPBS_TARBALL  the OpenPBS source  [vendor/openpbs-<commit>.tar.gz]
#   KDFLOW_OPENPBS_BUILD    build directory, kept as a cache        [/var/cache/kdflow/openpbs]
#   KDFLOW_PBS_USER         the ordinary user that submits the jobs [kdtest]
#   KDFLOW_OPENPBS_TIMEOUT  seconds to wait for the server and node  [300]
#   KDFLOW_PBS_VENV         the test user's venv (world-readable)   [/opt/kdflow-test/venv]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
COMMIT=cd7ab5edaf03dcac2f1cb9e2f42d75eb117d468a
TARBALL=${KDFLOW_OPENPBS_TARBALL:-$REPO/vendor/openpbs-${COMMIT:0:8}.tar.gz}
# The vendored tarball's sha256 (vendor/README.md); another copy (KDFLOW_OPENPBS_TARBALL) is not checked.
TARBALL_SHA256=c9df45210848853db8ef82f22800a6aca86dbfc6d38fff50b85a3c8ca0ad7e22
BUILD=${KDFLOW_OPENPBS_BUILD:-/var/cache/kdflow/openpbs}
PREFIX=/opt/pbs
PBS_HOME=/var/spool/pbs
MARKER=$PREFIX/.kdflow-openpbs-commit
TEST_USER=${KDFLOW_PBS_USER:-kdtest}
TIMEOUT=${KDFLOW_OPENPBS_TIMEOUT:-300}
VENV=${KDFLOW_PBS_VENV:-/opt/kdflow-test/venv}
# Queues: workq (the server's default) and gpu_1, CHPC Lengau's GPU queue name.
QUEUES=(workq gpu_1)
# The node offers what the profile asks of a GPU node (select=1:ncpus=10:ngpus=1) so jobs run
# side by side; the 2 real cores are shared. Memory is the host's (detected by the mom).
NODE_NCPUS=40
NODE_NGPUS=4

log() { printf 'openpbs.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Debian 12 build and run dependencies (INSTALL's list, adapted; sendmail left out: PBS only
# logs that it could not send mail).
PACKAGES=(gcc g++ make libtool autoconf automake pkg-config file ca-certificates
	libhwloc-dev libx11-dev libxt-dev libedit-dev libical-dev libncurses-dev perl
	postgresql-server-dev-all postgresql-contrib libpq-dev python3-dev
	tcl-dev tk-dev swig libexpat1-dev libssl-dev libxext-dev libxft-dev libcjson-dev
	expat libedit2 postgresql python3 sudo tcl tk libical3 libcjson1
	procps hostname iproute2)

built() { [[ -x $PREFIX/bin/qstat && -s $MARKER && $(<"$MARKER") == "$COMMIT" ]]; }

# The OpenPBS source to build: present, and the vendored one unless another was named.
cmd_source() {
	[[ -f $TARBALL ]] || die "no OpenPBS source at $TARBALL (set KDFLOW_OPENPBS_TARBALL)"
	if [[ -z ${KDFLOW_OPENPBS_TARBALL:-} ]]; then
		echo "$TARBALL_SHA256  $TARBALL" | sha256sum --check --quiet ||
			die "$TARBALL is not the vendored OpenPBS source (sha256 differs; see vendor/README.md)"
	fi
	echo "$TARBALL"
}

cmd_install() {
	if built; then
		return 0
	fi
	[[ $(id -u) -eq 0 ]] || die "building OpenPBS needs root (apt-get, /opt/pbs)"
	cmd_source >/dev/null
	local missing=() p
	for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	if ((${#missing[@]})); then
		log "installing ${#missing[@]} build packages"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	local src=$BUILD/src-${COMMIT:0:8}
	if [[ ! -f $src/configure.ac ]]; then
		rm -rf "$src"
		mkdir -p "$src"
		tar -xzf "$TARBALL" -C "$src" --strip-components=1
	fi
	log "building OpenPBS ${COMMIT:0:8} in $src (once per commit; a few minutes)"
	(
		cd "$src"
		# PBS embeds the system libpython: keep pyenv/venv pythons away from configure.
		export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		[[ -x configure ]] || ./autogen.sh >"$BUILD/autogen.log" 2>&1
		[[ -f Makefile ]] || ./configure --prefix=$PREFIX --with-python=/usr >"$BUILD/configure.log" 2>&1
		make -j"$(nproc)" >"$BUILD/make.log" 2>&1 || die "make failed: see $BUILD/make.log"
		# A build of another commit would leave its files behind.
		rm -rf "$PREFIX"
		make install >"$BUILD/install.log" 2>&1 || die "make install failed: see $BUILD/install.log"
	)
	echo "$COMMIT" >"$MARKER"
	built || die "OpenPBS installed but $PREFIX/bin/qstat is missing"
}

pbs() { PATH=$PREFIX/bin:$PREFIX/sbin:$PATH "$@"; }

server_up() { pbs qstat -B >/dev/null 2>&1; }
# the server answers, or its process has gone (it exits silently on a half-made datastore)
server_up_or_gone() { server_up || ! pgrep -x pbs_server.bin >/dev/null; }

node_up() {
	local state
	state=$(pbs pbsnodes "$(hostname)" 2>/dev/null | awk '$1 == "state" {print $3}')
	[[ $state == free || $state == job-busy || $state == job-exclusive ]]
}

wait_until() { # seconds what command...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@"; do
		((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what"
		sleep 0.5
	done
}

# PBS (TPP, get_fullhostname) skips 127.0.0.0/8: the hostname must resolve to a non-loopback
# address. Appended, so other programs (Slurm on localhost) still get 127.0.0.1 first.
ensure_hostname() {
	local host ip
	host=$(hostname)
	ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1)
	[[ -n $ip ]] || die "no non-loopback IPv4 address on this host: OpenPBS cannot run"
	getent ahosts "$host" | awk '{print $1}' | grep -qx "$ip" ||
		echo "$ip $host   # added by kdflow tests/cluster/openpbs.sh (OpenPBS needs it)" >>/etc/hosts
}

# Jobs come from an ordinary user: root's jobs are refused, and pbs_mom ignores root's
# processes (no memory enforcement, a qdel'ed root job ends with Exit_status 0).
ensure_user() {
	id "$TEST_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$TEST_USER"
}

write_conf() {
	cat >/etc/pbs.conf <<EOF
PBS_EXEC=$PREFIX
PBS_SERVER=$(hostname)
PBS_START_SERVER=1
PBS_START_SCHED=1
PBS_START_COMM=1
PBS_START_MOM=1
PBS_HOME=$PBS_HOME
PBS_CORE_LIMIT=unlimited
PBS_SCP=/usr/bin/scp
EOF
	chmod 644 /etc/pbs.conf
}

# The mom kills jobs over their `mem` request ($enforce mem; off by default) and checks limits
# every 1-2 s instead of 10-120 s, so walltime and memory kills land about 1 s after the limit.
write_mom_config() {
	local cfg=$PBS_HOME/mom_priv/config line
	for line in '$enforce mem' '$min_check_poll 1' '$max_check_poll 2'; do
		grep -qxF "$line" "$cfg" 2>/dev/null || echo "$line" >>"$cfg"
	done
}

# A GPU site: `ngpus` is a host-level consumable the scheduler schedules on. A stock server
# refuses `-l select=...:ngpus=1` with "Unknown resource: ngpus" (exit 187).
write_sched_config() {
	local cfg=$PBS_HOME/sched_priv/sched_config
	grep -q '^resources:.*ngpus' "$cfg" ||
		sed -i -E 's/^(resources: *"[^"]*)"/\1, ngpus"/' "$cfg"
}

configure_server() {
	local host q
	host=$(hostname)
	pbs qmgr -c "list node $host" >/dev/null 2>&1 || pbs qmgr -c "create node $host"
	pbs qmgr -c "list resource ngpus" >/dev/null 2>&1 ||
		pbs qmgr -c "create resource ngpus type=long, flag=nh"
	pbs qmgr -c "set node $host resources_available.ncpus = $NODE_NCPUS"
	pbs qmgr -c "set node $host resources_available.ngpus = $NODE_NGPUS"
	for q in "${QUEUES[@]}"; do
		pbs qmgr -c "list queue $q" >/dev/null 2>&1 || pbs qmgr -c "create queue $q queue_type = execution"
		pbs qmgr -c "set queue $q enabled = True"
		pbs qmgr -c "set queue $q started = True"
	done
	pbs qmgr -c "set server default_queue = workq"
	pbs qmgr -c "set server job_history_enable = True"
	# Clients reach the server over 127.0.0.1 (submit host `localhost`, not the server's name):
	# without flatuid every user's job is refused with "Bad UID for job execution".
	pbs qmgr -c "set server flatuid = True"
	# Tests may leave a per-user limit or scheduling off behind: a start restores the defaults.
	pbs qmgr -c "unset server max_queued" >/dev/null 2>&1 || true
	pbs qmgr -c "set server scheduling = True"
}

cmd_start() {
	[[ $(id -u) -eq 0 ]] || die "starting OpenPBS needs root"
	built || die "OpenPBS is not installed: run $0 install"
	ensure_hostname
	ensure_user
	if ! server_up; then
		if [[ ! -f /etc/pbs.conf || ! -d $PBS_HOME/server_priv ]]; then
			# "update-rc.d: error" / "not booted with systemd" from postinstall are harmless.
			$PREFIX/libexec/pbs_postinstall >/dev/null 2>&1 || true
			write_conf
		fi
		chmod 4755 $PREFIX/sbin/pbs_iff $PREFIX/sbin/pbs_rcp
		write_mom_config
		[[ -f $PBS_HOME/sched_priv/sched_config ]] && write_sched_config
		log "starting OpenPBS"
		/etc/init.d/pbs start >"${TMPDIR:-/tmp}/kdflow-openpbs-start.log" 2>&1 || true
		# Slow is not failed: wait while the server process runs (a loaded machine), and wipe
		# only on evidence. A failed first start leaves the datastore half initialised and the
		# server then exits silently: wipe it once and start from nothing.
		wait_until "$TIMEOUT" "the PBS server to answer or exit" server_up_or_gone
		if ! server_up; then
			log "the server exited without answering; wiping $PBS_HOME and starting afresh"
			/etc/init.d/pbs stop >/dev/null 2>&1 || true
			rm -rf "$PBS_HOME" /etc/pbs.conf
			$PREFIX/libexec/pbs_postinstall >/dev/null 2>&1 || true
			write_conf
			write_mom_config
			/etc/init.d/pbs start >>"${TMPDIR:-/tmp}/kdflow-openpbs-start.log" 2>&1 || true
			wait_until "$TIMEOUT" "the PBS server" server_up
		fi
	fi
	write_sched_config
	configure_server
	# the scheduler reads sched_config at start and on SIGHUP
	pkill -HUP -x pbs_sched 2>/dev/null || true
	wait_until "$TIMEOUT" "node $(hostname) to be free" node_up
	pbs qstat --version
}

cmd_stop() {
	[[ -x /etc/init.d/pbs ]] || return 0
	server_up || pgrep -x 'pbs_(mom|sched|comm|server.bin)' >/dev/null || return 0
	/etc/init.d/pbs stop >/dev/null 2>&1 || true
}

cmd_status() {
	built || {
		echo "OpenPBS not installed"
		return 1
	}
	server_up && node_up || {
		echo "OpenPBS not running"
		return 1
	}
	pbs qstat --version
	pbs pbsnodes "$(hostname)" | awk '$1 == "state" || $1 ~ /resources_available\.n(cpus|gpus)/'
}

# The test user cannot run the repository's .venv (its python may live under /root, mode 700),
# and PBS jobs get the login PATH, not the submitter's: the user gets a venv of its own, made
# from Debian's python3 in a world-readable place. It holds the project's dependencies, not
# kdflow: each test session layers its own copy of the repository's code on top of it
# (tests/cluster/conftest.py). One per set of dependencies: `$VENV.<hash of the dependency
# lists of both pyproject.toml files>`, and `$VENV` a symlink to the newest, swapped only once
# it is complete; a session resolves the link when it starts, so a rebuild never changes a
# venv under a running session. The newest two are kept.
deps_hash() {
	/usr/bin/python3 - "$REPO/pyproject.toml" "$REPO/plugins/snakemake-executor-plugin-pbs/pyproject.toml" <<-'PY' | sha256sum | cut -c1-16
		import json, sys, tomllib
		for path in sys.argv[1:]:
		    with open(path, "rb") as f:
		        data = tomllib.load(f)
		    project = data.get("project", {})
		    print(json.dumps([data.get("build-system"), project.get("requires-python"),
		                      project.get("dependencies"), project.get("optional-dependencies")],
		                     sort_keys=True))
	PY
}

cmd_venv() {
	local want built
	want=$(deps_hash)
	built=$VENV.$want
	if [[ -x $built/bin/python && -f $built/.kdflow-deps && $(readlink "$VENV" 2>/dev/null) == "$built" ]]; then
		return 0
	fi
	[[ -w $(dirname "$VENV") || $(id -u) -eq 0 ]] || die "cannot create $VENV (run as root)"
	# one builder at a time: another session may be building the same one
	mkdir -p "$(dirname "$VENV")"
	exec 8>"$VENV.lock"
	flock 8
	if [[ ! -f $built/.kdflow-deps ]]; then
		build_venv "$built"
	fi
	# the swap: a new link renamed over the old one (or over an old-style venv directory)
	[[ -L $VENV || ! -e $VENV ]] || rm -rf "$VENV"
	ln -sfn "$built" "$VENV.new" && mv -Tf "$VENV.new" "$VENV"
	local old
	for old in $(ls -1dt "$VENV".*/ 2>/dev/null | sed 's:/$::' | tail -n +3); do
		[[ $old == "$built" ]] || rm -rf "$old"
	done
}

build_venv() {
	local target=$1
	umask 022
	# Debian's python, not a pyenv or venv one found first on PATH
	export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	if ! /usr/bin/python3 -m venv --help >/dev/null 2>&1 || ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
		[[ $(id -u) -eq 0 ]] || die "python3-venv is missing (apt-get install python3-venv, as root)"
		log "installing python3-venv"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null ||
			{ apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
	fi
	log "making $target (the project's dependencies; a few minutes)"
	rm -rf "$target"
	/usr/bin/python3 -m venv "$target"
	# pip builds from a copy: an install from the checkout would leave build/ and *.egg-info there
	local copy
	copy=$(mktemp -d)
	cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/src" "$copy/"
	local plugin=$copy/plugins/snakemake-executor-plugin-pbs
	mkdir -p "$plugin"
	cp -r "$REPO/plugins/snakemake-executor-plugin-pbs/"{pyproject.toml,README.md,src} "$plugin/"
	local pip_log=${TMPDIR:-/tmp}/kdflow-test-venv.log
	{
		"$target/bin/python" -m pip install --upgrade pip 'setuptools>=68' wheel &&
			"$target/bin/python" -m pip install "$plugin[test]" "$copy[dev]"
	} >"$pip_log" 2>&1 || { rm -rf "$copy"; die "pip install into $target failed: see $pip_log"; }
	rm -rf "$copy"
	# dependencies only: each test session puts its own copy of the code under test on top
	"$target/bin/python" -m pip uninstall --yes --quiet kdflow snakemake-executor-plugin-pbs >>"$pip_log" 2>&1
	"$target/bin/python" -c 'import snakemake, torch, snakemake_executor_plugin_slurm' ||
		die "the venv $target does not import snakemake and torch"
	chmod -R a+rX "$target"
	touch "$target/.kdflow-deps"
}

case ${1:-} in
install) cmd_install ;;
source) cmd_source ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart)
	cmd_stop
	cmd_start
	;;
status) cmd_status ;;
venv) cmd_venv ;;
*)
	echo "usage: $0 install|source|start|stop|restart|status|venv" >&2
	exit 2
	;;
esac
