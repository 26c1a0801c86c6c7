#!/usr/bin/env bash
# Run a command on a machine made deliberately slow, to prove that the tests make their own
# conditions (tests/README.md): nothing they assert may depend on how fast the machine is.
#
#   tests/load.sh burn COMMAND...     one busy loop per core beside COMMAND, at its priority
#   tests/load.sh onecore COMMAND...  COMMAND, and the scheduler daemons that start the test
#                                     jobs (pbs_mom, slurmd), confined to one core (core 0)
#
# `make test-loaded` and `make test-onecore` run `make test`'s tests this way. The burners
# and the daemons' own affinity are put back when COMMAND ends, however it ends.
set -euo pipefail

mode=${1:-}
shift || true
[ $# -gt 0 ] && [[ $mode == burn || $mode == onecore ]] || {
    sed -n '5,6p' "$0" >&2
    exit 2
}

burners=()
daemons=()
restore() {
    if [ ${#burners[@]} -gt 0 ]; then kill "${burners[@]}" 2>/dev/null || true; fi
    local entry
    for entry in "${daemons[@]}"; do # pid=cpus it had
        taskset -a -p -c "${entry#*=}" "${entry%%=*}" >/dev/null 2>&1 || true
    done
}
trap restore EXIT

if [ "$mode" = burn ]; then
    for ((i = 0; i < $(nproc); i++)); do
        bash -c 'while :; do :; done' &
        burners+=($!)
    done
    echo "load.sh: ${#burners[@]} busy loops beside: $*" >&2
    "$@"
else
    # jobs are the daemons' children, not COMMAND's: confine the daemons, and so their jobs
    for name in pbs_mom slurmd slurmstepd; do
        for pid in $(pgrep -x "$name" || true); do
            cpus=$(taskset -p -c "$pid" 2>/dev/null | sed 's/.*: //') || continue
            taskset -a -p -c 0 "$pid" >/dev/null && daemons+=("$pid=$cpus")
        done
    done
    echo "load.sh: on core 0 (and ${#daemons[@]} scheduler daemons): $*" >&2
    taskset -c 0 "$@"
fi
