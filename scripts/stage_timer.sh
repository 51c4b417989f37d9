# Stage timing for long shell pipelines (scripts/demo.sh); source it, then:
#   stage "1/3 features: CLIP"   # prints "== 1/3 features: CLIP"; ends the previous stage with "(took N s)"
#   stage "2/3 train"
#   stage_end                    # ends the open stage (optional: stages_done does it too)
#   stages_done                  # prints every stage's time and the total
# A stage's short name, used in the summary, is its title up to the first ":" or " (".
# If the script exits early with an error, an EXIT trap says in which stage and after how long.
# Times are whole seconds from bash's SECONDS; the machine's CPU count and load are printed with the
# total, since the same run takes several times longer on a loaded machine.

_STAGE_NAME=""
_STAGE_T0=0
_STAGE_TIMES=()
_STAGE_START=$SECONDS
_STAGE_LOAD=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")

stage_end() {
    [ -n "$_STAGE_NAME" ] || return 0
    local took=$((SECONDS - _STAGE_T0))
    echo "== ${_STAGE_NAME} (took ${took} s)"
    _STAGE_TIMES+=("${_STAGE_NAME} ${took} s")
    _STAGE_NAME=""
}

stage() {
    stage_end
    echo "== $1"
    local name=${1%%:*}
    _STAGE_NAME=${name%% (*}
    _STAGE_T0=$SECONDS
}

_stage_seconds() {  # 125 -> "125 s (2 min 5 s)"
    if [ "$1" -ge 60 ]; then echo "$1 s ($(($1 / 60)) min $(($1 % 60)) s)"; else echo "$1 s"; fi
}

stages_done() {
    stage_end
    local total=$((SECONDS - _STAGE_START)) joined=""
    [ "${#_STAGE_TIMES[@]}" -eq 0 ] || joined=$(printf '%s, ' "${_STAGE_TIMES[@]}")
    echo "== total $(_stage_seconds "$total")${joined:+: ${joined%, }}"
    echo "   on $(nproc 2>/dev/null || echo '?') CPUs, load average ${_STAGE_LOAD} at the start" \
         "(a loaded machine takes several times longer)"
}

_stage_on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "$_STAGE_NAME" ]; then
        echo "== failed in ${_STAGE_NAME} after $((SECONDS - _STAGE_T0)) s (exit code ${rc}; total $((SECONDS - _STAGE_START)) s)" >&2
    fi
}
trap _stage_on_exit EXIT
