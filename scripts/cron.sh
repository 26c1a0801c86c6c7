#!/usr/bin/env bash
# Keep one kdflow controller alive for this working directory.
#
#   scripts/cron.sh on [MINUTES]   install the crontab entry (every 10 minutes by default)
#   scripts/cron.sh off            remove it (only ours: other entries are left alone)
#   scripts/cron.sh cron           one tick (what the crontab entry runs)
#   scripts/cron.sh status         is a controller alive? is the entry installed?
#
# A tick: if a controller for this directory is alive, refresh `kdflow status` and the live
# plots, and leave. If none is alive and the sweep is not finished, release Snakemake's stale
# lock (safe only because no controller is alive) and start `snakemake --profile
# profiles/pbs` detached. Ticks take a lock, so two at once start one controller.
#
# Remote mode (a workstation that reaches the cluster over SSH), set KDFLOW_REMOTE:
#   KDFLOW_REMOTE=user@login.host:/path/to/kdflow scripts/cron.sh cron
# pushes the code with rsync, ticks there, pulls results without checkpoints, and draws the
# plots here. KDFLOW_SSH adds ssh options (e.g. "-p 2222 -i ~/.ssh/id_kdflow").
#
# Settings (environment): KDFLOW_PROFILE (profiles/pbs), KDFLOW_CONFIGFILE (the sweep's
# config, default config/experiments.yaml: the controller runs it in place of the default,
# `kdflow status` and `kdflow report` show exactly its experiments), KDFLOW_SNAKEMAKE_ARGS
# (extra arguments for the controller), KDFLOW_VENV (.venv), KDFLOW_LOG_KEEP (5 rotated logs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=${KDFLOW_PROFILE:-profiles/pbs}
VENV=${KDFLOW_VENV:-$ROOT/.venv}
LOG_DIR=$ROOT/logs/cron
STATE_DIR=$ROOT/.kdflow
PID_FILE=$STATE_DIR/controller.pid
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
    if sweep_finished; then
        log "the sweep is finished: nothing to start (scripts/cron.sh off removes the entry)"
        refresh
        return 0
    fi
    # No controller is alive (we hold the tick lock, and the pid file's process is gone), so
    # a lock left in .snakemake/locks is stale: a SIGKILLed or rebooted controller's.
    "${SNAKEMAKE[@]}" ${KDFLOW_SNAKEMAKE_ARGS:-} --unlock >/dev/null 2>&1 || true
    # and controller.log has no writer: a live controller's log is never moved
    rotate "$LOG_DIR/controller.log"
    # 9>&-: the controller must not inherit the tick lock, or every later tick would wait
    # for the whole sweep
    setsid nohup "${SNAKEMAKE[@]}" ${KDFLOW_SNAKEMAKE_ARGS:-} \
        >>"$LOG_DIR/controller.log" 2>&1 </dev/null 9>&- &
    echo $! >"$PID_FILE"
    log "started controller $! (log: logs/cron/controller.log)"
}

remote_tick() {
    local remote=$KDFLOW_REMOTE host path
    host=${remote%%:*}
    path=${remote#*:}
    [ "$host" != "$remote" ] && [ -n "$path" ] || {
        echo "KDFLOW_REMOTE must be user@host:/path, got '$remote'" >&2
        exit 2
    }
    local ssh="ssh -o BatchMode=yes ${KDFLOW_SSH:-}"
    log "pushing code to $remote"
    rsync -az -e "$ssh" --exclude-from="$ROOT/scripts/rsync-exclude.txt" "$ROOT/" "$remote/"
    log "ticking on $host"
    # the settings travel along; local paths (the venv) and the remote mode itself do not
    local settings="" name
    for name in $(compgen -e | grep -E '^(SNAKEMAKE_PBS_|KDFLOW_)' |
        grep -vE '^KDFLOW_(REMOTE|SSH|VENV)$' || true); do
        settings+=" $name=$(printf '%q' "${!name}")"
    done
    $ssh "$host" "cd $(printf '%q' "$path") &&$settings scripts/cron.sh cron"
    log "pulling results (no checkpoints) from $remote"
    rsync -az -e "$ssh" --include='*/' --exclude='*.pth' --exclude='.*.tmp' \
        "$remote/results/" "$ROOT/results/"
    rsync -az -e "$ssh" "$remote/logs/cron/status.txt" "$LOG_DIR/status.remote.txt" || true
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
    if [ -n "${KDFLOW_REMOTE:-}" ]; then remote_tick; else tick; fi
    ;;
status) cmd_status ;;
*)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
