#!/usr/bin/env bash
# Capture the qstat/qsub/qdel samples in tests/samples/openpbs/ from a real OpenPBS server:
# a single node is enough, with job history on (`qmgr -c "set server job_history_enable =
# True"`), `$enforce mem` in the mom's config, and an ordinary user to submit the jobs.
#
#   PBS_CAPTURE_USER=<user> bash tests/samples/capture_openpbs.sh    (as root; about a minute)
#
# Settings (environment):
#   PBS_CAPTURE_USER     the ordinary user who submits every job               [pbstest]
#   PBS_CAPTURE_PREFIX   where OpenPBS is installed                            [/opt/pbs]
#   PBS_CAPTURE_SOURCE   what the server was built from, for the README, e.g. a commit [none]
#
# Every job is submitted by that user from a scratch directory the user owns (root's jobs are
# refused, and pbs_mom ignores root's processes). The jobs are named cap*; the script only ever
# qdel's the jobs it submitted itself. The one server setting it changes is max_queued, for one
# qsub, and it puts the old value back at once (also on failure).
#
# Output (replaces tests/samples/openpbs/ when every step worked):
#   captures.tsv          name, exit status, user, exact command of every capture
#   <name>.stdout/.stderr what that command printed, byte for byte
#   jobs.tsv              role, job id, job name, qsub command of every job submitted
#   server.tsv            facts the tests compare with: user, server, submit directory, version
#   oe/                   each job's .o/.e file as PBS copied it back to the submit directory
#   README.md             how it was made (server version, date)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/openpbs
PREFIX=${PBS_CAPTURE_PREFIX:-/opt/pbs}
PBS_USER=${PBS_CAPTURE_USER:-pbstest}
SOURCE=${PBS_CAPTURE_SOURCE:-}
# Long, so that PBS_O_WORKDIR and the output paths wrap onto TAB-led continuation lines.
SCRATCH_ROOT=/tmp/pbs-capture
SCRATCH=$SCRATCH_ROOT/a-submit-directory-with-a-long-name-so-that-qstat-wraps-PBS_O_WORKDIR
# The held job is submitted from here: a comma in a value is escaped (`\,`) in Variable_List.
COMMA_DIR=$SCRATCH/dir,with,commas
PBS_PATH=$PREFIX/bin:/usr/bin:/bin
UNKNOWN=99999

log() { printf 'capture_openpbs.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (the jobs are submitted as $PBS_USER with runuser)"
[[ -x $PREFIX/bin/qstat ]] || die "no OpenPBS in $PREFIX (set PBS_CAPTURE_PREFIX)"
id "$PBS_USER" >/dev/null 2>&1 || die "no user $PBS_USER (set PBS_CAPTURE_USER)"
PATH=$PREFIX/bin:$PREFIX/sbin:$PATH qstat -B >/dev/null 2>&1 ||
	die "the PBS server does not answer: start it first"

SERVER=$(PATH=$PBS_PATH qstat -B -f | awk '$1 == "Server:" {print $2; exit}')
TMP=$(mktemp -d /tmp/pbs-capture-out.XXXXXX)
chmod 755 "$TMP"
MINE=()             # every job id this script submitted (and nothing else is ever qdel'ed)
RESTORE_QUEUED=""   # the qmgr directive that puts max_queued back, while it is changed

cleanup() {
	local id
	if [[ -n $RESTORE_QUEUED ]]; then
		PATH=$PBS_PATH qmgr -c "$RESTORE_QUEUED" || log "could not restore max_queued: $RESTORE_QUEUED"
	fi
	for id in "${MINE[@]}"; do
		PATH=$PBS_PATH qdel "$id" >/dev/null 2>&1 || true # already finished: refused, harmless
	done
	rm -rf "$TMP"
}
trap cleanup EXIT

# A command as the ordinary user, from the scratch directory.
as_user() { (cd "$SCRATCH" && runuser -u "$PBS_USER" -- env PATH=$PBS_PATH "$@"); }
as_root() { (cd "$SCRATCH" && env PATH=$PBS_PATH "$@"); }

# capture NAME USER COMMAND...: NAME.stdout, NAME.stderr and a line in captures.tsv.
capture() {
	local name=$1 who=$2 rc=0
	shift 2
	"as_$who" "$@" >"$TMP/$name.stdout" 2>"$TMP/$name.stderr" || rc=$?
	printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$who" "$*" >>"$TMP/captures.tsv"
	return 0
}

# submit ROLE NAME [qsub options...] SCRIPT: qsub as the user; the id goes to jobs.tsv and MINE.
submit() {
	local role=$1 name=$2 id
	shift 2
	id=$(as_user qsub -N "$name" "$@") || die "qsub of $name refused"
	MINE+=("$id")
	printf '%s\t%s\t%s\t%s\n' "$role" "$id" "$name" "qsub -N $name $*" >>"$TMP/jobs.tsv"
	printf -v "JOB_${role^^}" '%s' "$id"
}

attr() { # attr ID NAME: one attribute of a job (history included), as the user sees it
	as_user qstat -x -f "$1" 2>/dev/null | awk -v n="$2" '$1 == n {print $3; exit}'
}

wait_for() { # wait_for SECONDS WHAT COMMAND...
	local seconds=$1 what=$2
	local deadline=$((SECONDS + seconds))
	shift 2
	until "$@"; do
		((SECONDS < deadline)) || die "timed out after $seconds s waiting for $what"
		sleep 0.5
	done
}

state_is() {
	local state
	state=$(attr "$1" job_state)
	[[ -n $state ]] || die "job $1 vanished: was job history turned off (by another test)?"
	[[ $state == "$2" ]]
}
has_comment() { as_user qstat -f "$1" 2>/dev/null | grep -q '^    comment = '; }
has_used_walltime() { as_user qstat -f "$1" 2>/dev/null | grep -q '^    resources_used.walltime = '; }
all_finished() {
	local id
	for id in "$@"; do state_is "$id" F || return 1; done
}
files_back() { # every job's .o and .e file copied back into its submit directory
	local id
	for id in "$@"; do
		[[ -f $SCRATCH/$(name_of "$id").o${id%%.*} && -f $SCRATCH/$(name_of "$id").e${id%%.*} ]] ||
			return 1
	done
}
name_of() { awk -F'\t' -v id="$1" '$2 == id {print $3}' "$TMP/jobs.tsv"; }

# Another test may turn job history off or set max_queued for a while: wait for the defaults.
server_setting() { PATH=$PBS_PATH qmgr -c "list server $1" | sed -n "s/^ *$1 = //p"; }
server_ready() { [[ $(server_setting job_history_enable) == True && -z $(server_setting max_queued) ]]; }
wait_for 600 "job history on and no max_queued on the server" server_ready

# --- the jobs' scripts --------------------------------------------------------------------------
rm -rf "$SCRATCH_ROOT"
mkdir -p "$COMMA_DIR"
cd "$SCRATCH"
cat >ok.sh <<'EOF'
#!/bin/bash
echo "capok: on stdout"
echo "capok: on stderr" >&2
EOF
cat >wall.sh <<'EOF'
#!/bin/bash
echo "capwall: started, sleeping past a 3 s walltime"
sleep 60
echo "capwall: not reached"
EOF
cat >mem.sh <<'EOF'
#!/bin/bash
echo "capmem: started, holding 500 MB under a 50mb request"
python3 -c '
import time
block = b"x" * (500 * 2**20)
print("capmem: allocated", flush=True)
time.sleep(60)
'
echo "capmem: python exit=$?"
EOF
cat >sleep.sh <<'EOF'
#!/bin/bash
echo "$PBS_JOBNAME: started"
sleep 300
echo "$PBS_JOBNAME: not reached"
EOF
cat >exit3.sh <<'EOF'
#!/bin/bash
echo "capexit3: exiting 3"
echo "capexit3: on stderr" >&2
exit 3
EOF
cat >kill9.sh <<'EOF'
#!/bin/bash
echo "capkill9: kill -9 of the job shell"
kill -9 $$
echo "capkill9: not reached"
EOF
cat >never.sh <<'EOF'
#!/bin/bash
echo "never runs"
EOF
cp never.sh "$COMMA_DIR/never.sh"
chown -R "$PBS_USER:" "$SCRATCH_ROOT"
chmod 755 "$SCRATCH_ROOT"

# --- the jobs -----------------------------------------------------------------------------------
LONG_A=$(printf 'value-%02d-' {1..12})
LONG_B=/a/long/path/value/that/is/longer/than/one/line/of/qstat/output/so/that/it/wraps/mid/token
submit ok capok -l walltime=00:05:00 -v "CAP_LONG_A=$LONG_A,CAP_LONG_B=$LONG_B" ok.sh
submit wall capwall -l walltime=00:00:03 wall.sh
submit mem capmem -l select=1:ncpus=1:mem=50mb -l walltime=00:05:00 mem.sh
submit del capdel -l walltime=00:05:00 sleep.sh
submit exit3 capexit3 -l walltime=00:05:00 exit3.sh
submit kill9 capkill9 -l walltime=00:05:00 kill9.sh
submit run caprun -l walltime=00:10:00 sleep.sh
# Held from the start, from a directory with commas in its name.
(
	cd "$COMMA_DIR"
	id=$(runuser -u "$PBS_USER" -- env PATH=$PBS_PATH qsub -N caphold -h \
		-v "CAP_COMMA='one,two,three'" never.sh) || die "qsub of caphold refused"
	printf '%s\t%s\t%s\t%s\n' hold "$id" caphold \
		"(from $COMMA_DIR) qsub -N caphold -h -v CAP_COMMA='one,two,three' never.sh" \
		>>"$TMP/jobs.tsv"
)
JOB_HOLD=$(awk -F'\t' '$1 == "hold" {print $2}' "$TMP/jobs.tsv")
MINE+=("$JOB_HOLD")
# More cpus than the node has: queued for good, with the scheduler's comment.
submit queued capqueued -l select=1:ncpus=999 never.sh

wait_for 60 "capdel to run" state_is "$JOB_DEL" R
# Only once the mom has reported on the job (its first poll): a qdel in the job's first second
# can reach the job's shells before they are all set up, and the script then ends with exit 0.
wait_for 60 "the mom's first report on capdel" has_used_walltime "$JOB_DEL"
sleep 2
capture qdel-running user qdel "$JOB_DEL"
wait_for 60 "caprun to run" state_is "$JOB_RUN" R
wait_for 60 "the scheduler's comment on capqueued" has_comment "$JOB_QUEUED"
ENDING=("$JOB_OK" "$JOB_WALL" "$JOB_MEM" "$JOB_DEL" "$JOB_EXIT3" "$JOB_KILL9")
wait_for 180 "the ending jobs to finish" all_finished "${ENDING[@]}"

# --- qstat, while caprun runs, caphold is held and capqueued is queued ------------------------
ALL=("$JOB_OK" "$JOB_WALL" "$JOB_MEM" "$JOB_DEL" "$JOB_EXIT3" "$JOB_KILL9" "$JOB_RUN"
	"$JOB_HOLD" "$JOB_QUEUED")
capture qstat-version user qstat --version
capture qstat-xf-several user qstat -x -f "${ALL[@]}"
[[ $(grep -c '^Job Id: ' "$TMP/qstat-xf-several.stdout") -eq ${#ALL[@]} ]] ||
	die "qstat -x -f did not show all ${#ALL[@]} jobs: was job history turned off?"
capture qstat-f-listing user qstat -f
capture qstat-xf-json-several user qstat -x -f -F json "${ALL[@]}"
capture qstat-xf-json-one-finished user qstat -x -f -F json "$JOB_OK"
capture qstat-xf-unknown user qstat -x -f "$UNKNOWN.$SERVER"
capture qstat-f-finished-without-x user qstat -f "$JOB_OK"
capture qstat-xf-one-unknown-among-several user qstat -x -f "$JOB_OK" "$UNKNOWN.$SERVER" "$JOB_EXIT3"
capture qstat-f-finished-among-several-without-x user qstat -f "$JOB_RUN" "$JOB_OK"
capture qdel-unknown user qdel "$UNKNOWN.$SERVER"
capture qsub-unknown-resource user qsub -N capbadres -l select=1:ncpus=1:foo=1 never.sh
capture qsub-as-root root qsub -N caproot never.sh
if [[ -s $TMP/qsub-as-root.stdout ]]; then # accepted after all: not ours to keep
	MINE+=("$(<"$TMP/qsub-as-root.stdout")")
fi

# A per-user limit of one job (the user has caprun, caphold, capqueued): the qsub is refused.
# The old value goes back at once: other tests may be running on this server.
OLD_QUEUED=$(server_setting max_queued)
if [[ -n $OLD_QUEUED ]]; then
	RESTORE_QUEUED="set server max_queued = $OLD_QUEUED"
else
	RESTORE_QUEUED="unset server max_queued"
fi
PATH=$PBS_PATH qmgr -c "set server max_queued = [u:PBS_GENERIC=1]"
capture qsub-over-max-queued user qsub -N capover never.sh
PATH=$PBS_PATH qmgr -c "$RESTORE_QUEUED"
RESTORE_QUEUED=""
if [[ -s $TMP/qsub-over-max-queued.stdout ]]; then
	MINE+=("$(<"$TMP/qsub-over-max-queued.stdout")")
fi

# --- the end: the live jobs go, every job's .o/.e file comes back ------------------------------
for id in "$JOB_RUN" "$JOB_HOLD" "$JOB_QUEUED"; do as_user qdel "$id"; done
wait_for 60 "the jobs to finish" all_finished "${ALL[@]}"
capture qstat-xf-deleted user qstat -x -f "$JOB_RUN" "$JOB_HOLD" "$JOB_QUEUED"
RAN=("${ENDING[@]}" "$JOB_RUN")
wait_for 60 "the .o/.e files" files_back "${RAN[@]}"
mkdir "$TMP/oe"
for id in "${RAN[@]}"; do
	cp "$SCRATCH/$(name_of "$id")".[oe]"${id%%.*}" "$TMP/oe/"
done
chmod 644 "$TMP"/oe/* "$TMP"/*.std* "$TMP"/*.tsv

# --- README -------------------------------------------------------------------------------------
VERSION=$(sed -n 's/^pbs_version = //p' "$TMP/qstat-version.stdout")
[[ -n $VERSION ]] || die "qstat --version printed no pbs_version"
printf '%s\t%s\n' user "$PBS_USER" server "$SERVER" submit_dir "$SCRATCH" version "$VERSION" \
	>"$TMP/server.tsv"
BUILT=""
[[ -z $SOURCE ]] || BUILT=" (built from $SOURCE)"
{
	cat <<EOF
# qstat, qsub and qdel output captured from a real OpenPBS server

Made by \`bash tests/samples/capture_openpbs.sh\` (as root) on $(date -u '+%Y-%m-%d %H:%M UTC'),
against OpenPBS $VERSION$BUILT: one node \`$SERVER\`, job history on, \`\$enforce mem\`, the mom
checking limits every 1-2 s. \`server.tsv\` holds the facts the tests compare with.
Nothing here is edited: the host name stays \`$SERVER\`, clients reach the server over 127.0.0.1 so
the submit host is \`localhost\`. Rerunning the script replaces every file (other job ids, times).

Every job was submitted by the ordinary user \`$PBS_USER\` (\`runuser -u $PBS_USER -- env
PATH=$PBS_PATH qsub ...\`) from \`$SCRATCH\`, a path long enough that
\`PBS_O_WORKDIR\` and the output paths wrap; \`caphold\` was submitted from \`dir,with,commas\` below
it (a comma in a value is written \`\\,\` in \`Variable_List\`). The job scripts are in the capture
script.

## Jobs (\`jobs.tsv\`: role, id, name, qsub command)

| role | what the job does | seen as |
|---|---|---|
| ok | prints a line on stdout and one on stderr; long \`-v\` values | finished, exit 0 |
| wall | sleeps 60 s under \`walltime=00:00:03\` | killed by PBS at its walltime |
| mem | python holds 500 MB under \`select=1:ncpus=1:mem=50mb\` | killed by PBS for its memory |
| del | sleeps 300 s; \`qdel\` by $PBS_USER once it runs | deleted while running |
| exit3 | \`exit 3\` | finished, exit 3 |
| kill9 | \`kill -9 \$\$\` | its bash killed by SIGKILL (the shell PBS started it from says 137) |
| run | sleeps 300 s | running when qstat was asked; qdel'ed after |
| hold | \`qsub -h\` | held (H) when qstat was asked; qdel'ed after |
| queued | \`select=1:ncpus=999\` (the node has 40) | queued (Q) when qstat was asked; qdel'ed after |

\`oe/\` holds the .o and .e file of every job that ran, as PBS copied them back.

## Captures (\`captures.tsv\`: name, exit status, user, command; \`<name>.stdout\`, \`<name>.stderr\`)

| name | exit | user | command |
|---|---|---|---|
EOF
	while IFS=$'\t' read -r name rc who command; do
		printf '| %s | %s | %s | `%s` |\n' "$name" "$rc" "$who" "$command"
	done <"$TMP/captures.tsv"
	cat <<'EOF'

`qstat-xf-json-several`: OpenPBS issue 2672. Asked `-F json` about several jobs, qstat prints only
the first one and exits 0: a caller that reads the missing jobs as ended resubmits them. This is
why the executor asks PBS Pro / OpenPBS in text (`qstat -x -f`), whatever its version, and has no
JSON parser; `-F json` of one job (`qstat-xf-json-one-finished`) is complete.

`qstat-xf-deleted`: caprun, caphold and capqueued after their qdel (running, held, queued).

## Generated samples (not from a server)

`../generated_*` files were written by `../generate_samples.py` from reading OpenPBS's qstat.c,
for what this server cannot show: Torque (`generated_torque_qstat_f.txt`) and PBS Pro before
18 (`generated_pbspro_pre18_qstat_xf.txt`: walltime kills reported as 271/265 instead of -29).
`generate_samples.py` also synthesises large listings for benchmarks.
EOF
} >"$TMP/README.md"

rm -rf "$OUT"
cp -r "$TMP" "$OUT"
chmod 755 "$OUT" "$OUT/oe"
log "wrote $OUT: ${#ALL[@]} jobs, $(wc -l <"$TMP/captures.tsv") captures"
