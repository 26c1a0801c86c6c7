#!/usr/bin/env bash
# Keep one kdflow controller alive for this working directory.
#
#   scripts/cron.sh on [MINUTES]   install the crontab entry (every 10 minutes by default)
#   scripts/cron.sh off            remove it (only ours: other entries are left alone)
#   scripts/cron.sh cron           one tick (what the crontab entry runs)
#   scripts/cron.sh status         is a controller alive? is the entry installed?
#
# A tick: if a controller for this working directory is alive, refresh `kdflow status` and the
# live plots, and leave. If none is alive and the sweep is not finished, release Snakemake's
# stale lock (safe only because no controller is alive) and start `snakemake --profile
# profiles/pbs` detached; then watch it until Snakemake schedules jobs or the controller exits
# (at most KDFLOW_START_WAIT seconds, 60): one that dies at start fails the tick (exit 1) with
# the end of its log, logs/cron/controller.log. A tick that finds the last controller ended
# says so, with the end of its log. Ticks take a lock, so two at once start one controller.
#
# Remote mode (a workstation that reaches the cluster over SSH), set KDFLOW_REMOTE:
#   KDFLOW_REMOTE=user@login.host:/path/to/kdflow scripts/cron.sh cron
# pushes the code with rsync, ticks there, pulls results without checkpoints, and draws the
# plots here. The tick there runs in the cluster's login environment (`bash -l`: /etc/profile,
# then ~/.bash_profile or ~/.profile), where sites put qsub on PATH; a non-interactive ssh
# alone reads none of them. KDFLOW_REMOTE_SETUP is shell code run in that shell before the
# tick (e.g. "module load pbs"); if it fails, the tick does not run. The tick's failure and
# its message come back: this tick fails too. KDFLOW_SSH adds ssh options (e.g. "-p 2222 -i
# ~/.ssh/id_kdflow"). A cluster without results/ yet has nothing to pull: that is no error.
#
# Settings (environment): KDFLOW_PROFILE (profiles/pbs), KDFLOW_CONFIGFILE (the sweep's
# config, default config/experiments.yaml: the controller runs it in place of the default,
# `kdflow status` and `kdflow report` show exactly its experiments), KDFLOW_SNAKEMAKE_ARGS
# (extra arguments for the controller), KDFLOW_VENV (.venv), KDFLOW_LOG_KEEP (5 rotated logs),
# KDFLOW_START_WAIT (60: seconds a tick watches the controller it started). The KDFLOW_* and
# SNAKEMAKE_PBS_* settings travel to the remote tick, except KDFLOW_REMOTE, KDFLOW_SSH,
# KDFLOW_VENV and KDFLOW_REMOTE_SETUP.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=${KDFLOW_PROFILE:-profiles/pbs}
VENV=${KDFLOW_VENV:-$ROOT/.venv}
LOG_DIR=$ROOT/logs/cron
STATE_DIR=$ROOT/.kdflow
PID_FILE=$STATE_DIR/controller.pid
CONTROLLER_LOG=$LOG_DIR/controller.log
START_WAIT=${KDFLOW_START_WAIT:-60}
TAG="# kdflow-cron:$ROOT"
PATH="$VENV/bin:$PATH"
export PATH
SNAKEMAKE=(snakemake --profile "$PROFILE") # + the config, + KDFLOW_SNAKEMAKE_ARGS (unquoted)
KDFLOW_CONFIG=()                           # for kdflow status and kdflow report
if [ -n "${KDFLOW_CONFIGFILE:-}" ]; then
    SNAKEMAKE+=(--configfile "$KDFLOW_CONFIGFILE" --replace-workflow-config)
    KDFLOW_CONFIG=(--configfile "$KDFLOW_CONFIGFILE")
fi

mkdir -p "$LOG_DIR" "$STATE_DIR"

log() { printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"; }

# $1 quoted for any POSIX shell: '...', each ' written '\''
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# The last lines of FILE from byte FROM on (default: all of it), indented, for a log
log_tail() {
    local file=$1 from=${2:-0} lines
    lines=$(tail -c +"$((from + 1))" "$file" 2>/dev/null | tail -n "${KDFLOW_LOG_TAIL:-20}")
    if [ -n "$lines" ]; then
        printf '%s\n' "$lines" | sed 's/^/    | /'
    else
        echo "    (nothing in ${file#"$ROOT"/})"
    fi
}

# Rotate FILE when it passes 1 MB, keeping KDFLOW_LOG_KEEP old ones. Only ever called where
# nothing can be writing FILE: a file renamed under a live writer keeps growing under its new
# name while the new one stays empty.
rotate() {
    local file=$1 keep=${KDFLOW_LOG_KEEP:-5} i
    [ -f "$file" ] && [ "$(stat -c %s "$file")" -gt 1048576 ] || return 0
    for ((i = keep - 1; i >= 1; i--)); do
        [ -f "$file.$i" ] && mv -f "$file.$i" "$file.$((i + 1))"
    done
    mv -f "$file" "$file.1"
}

controller_pid() { # the pid of this directory's live controller, or nothing
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    # a recycled pid is not our controller: check that it is snakemake, started here
    if grep -qa snakemake "/proc/$pid/cmdline" 2>/dev/null &&
        [ "$(readlink "/proc/$pid/cwd")" = "$ROOT" ]; then
        echo "$pid"
    fi
}

ended() { # true once process $1 has ended (a zombie has: it only waits to be reaped)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [ "${stat%% *}" = Z ]
}

# True once what the controller wrote past byte $1 of its log shows Snakemake scheduling jobs:
# its scheduler and executor are set up (the PBS executor has found qsub, qstat and qdel).
scheduling() {
    local new
    new=$(tail -c +"$(($1 + 1))" "$CONTROLLER_LOG" 2>/dev/null) || return 1
    grep -qE '^(Provided (remote nodes|cores):|Job stats:|Select jobs to execute)' <<<"$new"
}

crontab_lines() { crontab -l 2>/dev/null || true; }

cmd_on() {
    local every=${1:-10}
    [[ $every =~ ^[0-9]+$ ]] && [ "$every" -ge 1 ] && [ "$every" -le 59 ] || {
        echo "cron.sh on: MINUTES must be a whole number from 1 to 59, got '$every'" >&2
        exit 2
    }
    # cron starts with an almost empty environment: keep this shell's PATH (qsub, qstat) and
    # the kdflow and plugin settings (SNAKEMAKE_PBS_QUEUE, SNAKEMAKE_PBS_PROJECT, ...)
    local settings name
    settings="PATH=$(printf '%q' "$PATH")"
    for name in $(compgen -e | grep -E '^(SNAKEMAKE_PBS_|KDFLOW_)' || true); do
        settings+=" $name=$(printf '%q' "${!name}")"
    done
    local entry="*/$every * * * * cd $(printf '%q' "$ROOT") && $settings scripts/cron.sh cron >>logs/cron/cron.log 2>&1 $TAG"
    { crontab_lines | grep -vF -- "$TAG" || true; echo "$entry"; } | crontab -
    echo "installed: $entry"
}

cmd_off() {
    if crontab_lines | grep -qF -- "$TAG"; then
        crontab_lines | grep -vF -- "$TAG" | crontab -
        echo "removed the kdflow entry for $ROOT"
    else
        echo "no kdflow entry for $ROOT"
    fi
}

sweep_finished() { # true when Snakemake has nothing left to do
    local plan # captured first: `| grep -q` would SIGPIPE snakemake and fail under pipefail
    plan=$("${SNAKEMAKE[@]}" ${KDFLOW_SNAKEMAKE_ARGS:-} -n --quiet 2>&1 || true)
    [[ $plan == *"Nothing to be done"* ]]
}

refresh() { # the dashboard into the log, and the live plots
    kdflow status "${KDFLOW_CONFIG[@]}" >"$LOG_DIR/status.txt" 2>&1 || true
    [ -d results ] || return 0
    kdflow report "${KDFLOW_CONFIG[@]}" >"$LOG_DIR/report.txt" 2>&1 || log "kdflow report failed: see $LOG_DIR/report.txt"
}

tick() {
    # one tick at a time: a second tick waits for the first, then finds its controller
    exec 9>"$STATE_DIR/tick.lock"
    flock 9
    # cron.log is written by ticks only, one at a time: under the lock nothing else writes it
    rotate "$LOG_DIR/cron.log"
    local pid
    pid=$(controller_pid)
    if [ -n "$pid" ]; then
        log "controller $pid is alive; refreshing status and plots"
        refresh
        return 0
    fi
    if [ -f "$PID_FILE" ]; then # its controller has ended since the last tick: say so, once
        pid=$(tr -cd '0-9' <"$PID_FILE")
        rm -f "$PID_FILE"
        log "the previous controller${pid:+ ($pid)} has ended; the end of logs/cron/controller.log:"
        log_tail "$CONTROLLER_LOG"
    fi
    if sweep_finished; then
        log "the sweep is finished: nothing to start (scripts/cron.sh off removes the entry)"
        refresh
        return 0
    fi
    # No controller is alive (we hold the tick lock, and the pid file's process is gone), so
    # a lock left in .snakemake/locks is stale: a SIGKILLed or rebooted controller's.
    "${SNAKEMAKE[@]}" ${KDFLOW_SNAKEMAKE_ARGS:-} --unlock >/dev/null 2>&1 || true
    # and controller.log has no writer: a live controller's log is never moved
    rotate "$CONTROLLER_LOG"
    local start
    start=$(stat -c %s "$CONTROLLER_LOG" 2>/dev/null || echo 0) # where this one's lines begin
    # 9>&-: the controller must not inherit the tick lock, or every later tick would wait
    # for the whole sweep
    setsid nohup "${SNAKEMAKE[@]}" ${KDFLOW_SNAKEMAKE_ARGS:-} \
        >>"$CONTROLLER_LOG" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    watch_start "$pid" "$start"
}

# Watch the controller just started (pid $1, its log from byte $2) until Snakemake schedules
# jobs or it exits, for at most START_WAIT seconds. A controller that died fails the tick
# with the end of its log: a tick never reports a dead controller as started.
watch_start() {
    local pid=$1 start=$2 began=$SECONDS status=0
    local where="(log: logs/cron/controller.log)"
    until ended "$pid"; do
        if scheduling "$start"; then
            log "started controller $pid $where: Snakemake is scheduling jobs"
            return 0
        fi
        if [ "$((SECONDS - began))" -ge "$START_WAIT" ]; then
            log "started controller $pid $where: not scheduling jobs yet after ${START_WAIT}s;" \
                "the next tick tells whether it runs"
            return 0
        fi
        sleep 0.2 # polls the two events above; nothing to sleep on instead in plain bash
    done
    wait "$pid" || status=$?
    rm -f "$PID_FILE"
    if [ "$status" -eq 0 ]; then
        log "started controller $pid $where: it has already ended, exit status 0; its log ends:"
        log_tail "$CONTROLLER_LOG" "$start"
        return 0
    fi
    log "FAILED: the controller $pid died within $((SECONDS - began))s of starting (exit status" \
        "$status); the end of logs/cron/controller.log:"
    log_tail "$CONTROLLER_LOG" "$start"
    return 1
}

remote_tick() {
    local remote=$KDFLOW_REMOTE host path
    host=${remote%%:*}
    path=${remote#*:}
    # a host that ssh or rsync could take for an option (-oProxyCommand=...) is refused
    if [ "$host" = "$remote" ] || [ -z "$path" ] || [[ ! $host =~ ^[A-Za-z0-9_.%+@][A-Za-z0-9_.%+@-]*$ ]]; then
        echo "KDFLOW_REMOTE must be user@host:/path, got '$remote'" >&2
        exit 2
    fi
    local ssh="ssh -o BatchMode=yes ${KDFLOW_SSH:-}" status=0
    log "pushing code to $remote"
    rsync -az -e "$ssh" --exclude-from="$ROOT/scripts/rsync-exclude.txt" "$ROOT/" "$remote/" || {
        status=$?
        log "FAILED: pushing the code to $remote (rsync exit status $status)"
        exit "$status"
    }
    log "ticking on $host (a login shell there)"
    # the settings travel along; local paths (the venv) and the remote mode itself do not
    local settings="" name script=""
    for name in $(compgen -e | grep -E '^(SNAKEMAKE_PBS_|KDFLOW_)' |
        grep -vE '^KDFLOW_(REMOTE|SSH|VENV|REMOTE_SETUP)$' || true); do
        settings+="$name=$(shq "${!name}") "
    done
    # one line of bash for `bash -lc` there, every value quoted; the site's set-up is eval'ed,
    # so that nothing in it (a comment, a stray quote) reaches past it into the tick
    if [ -n "${KDFLOW_REMOTE_SETUP:-}" ]; then
        script+="eval $(shq "$KDFLOW_REMOTE_SETUP") || { echo \"cron.sh: KDFLOW_REMOTE_SETUP"
        script+=" failed there (exit status \$?): no tick\"; exit 2; }; "
    fi
    script+="cd $(shq "$path") && ${settings}exec bash scripts/cron.sh cron"
    $ssh "$host" "bash -lc $(shq "$script")" || status=$?
    if [ "$status" -eq 255 ]; then
        log "FAILED: ssh to $host (exit status 255): no tick there"
        exit 255
    fi
    [ "$status" -eq 0 ] || log "FAILED: the tick on $host (exit status $status): its lines are above"
    pull_results "$ssh" "$host" "$path" || exit "$((status ? status : $?))"
    exit "$status"
}

pull_results() { # ssh host path: results without checkpoints, the dashboard, plots drawn here
    local ssh=$1 host=$2 path=$3 out status=0
    log "pulling results (no checkpoints) from $host:$path"
    out=$(rsync -az -e "$ssh" --include='*/' --exclude='*.pth' --exclude='.*.tmp' \
        "$host:$path/results/" "$ROOT/results/" 2>&1) || status=$?
    if [ "$status" -ne 0 ]; then
        local there=0
        $ssh "$host" "test -e $(shq "$path/results")" || there=$?
        if [ "$there" -ne 1 ]; then # 0: it is there, 255: ssh failed; either way a real failure
            printf '%s\n' "$out" >&2
            log "FAILED: pulling results from $host:$path (rsync exit status $status)"
            return "$status"
        fi
        log "nothing to pull yet: no results/ on the cluster"
        return 0
    fi
    rsync -az -e "$ssh" "$host:$path/logs/cron/status.txt" "$LOG_DIR/status.remote.txt" \
        >/dev/null 2>&1 || true
    kdflow report "${KDFLOW_CONFIG[@]}" >"$LOG_DIR/report.txt" 2>&1 || log "kdflow report failed: see $LOG_DIR/report.txt"
    log "plots drawn locally under results/summary/"
}

cmd_status() {
    local pid
    pid=$(controller_pid)
    echo "controller: ${pid:-none alive}"
    if crontab_lines | grep -qF -- "$TAG"; then
        echo "cron entry: $(crontab_lines | grep -F -- "$TAG")"
    else
        echo "cron entry: not installed"
    fi
}

case "${1:-}" in
on) cmd_on "${2:-10}" ;;
off) cmd_off ;;
cron)
    [[ $START_WAIT =~ ^[0-9]+$ ]] || {
        echo "KDFLOW_START_WAIT must be a whole number of seconds, got '$START_WAIT'" >&2
        exit 2
    }
    if [ -n "${KDFLOW_REMOTE:-}" ]; then remote_tick; else tick; fi
    ;;
status) cmd_status ;;
*)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
