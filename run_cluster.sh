#!/usr/bin/env bash
# run_cluster.sh: start, inspect and stop a quorumkv cluster on 127.0.0.1 (DESIGN §9).
#
#   ./run_cluster.sh [start] [N]   build, then start N replicas (default 3)
#   ./run_cluster.sh status        each replica: pid alive/dead and its STATUS line
#   ./run_cluster.sh kill ID       kill -9 one replica (a crash; its data stays)
#   ./run_cluster.sh restart ID    start that replica again: same flags, same data
#   ./run_cluster.sh client [ID]   interactive client to replica ID (default 1)
#   ./run_cluster.sh stop          stop every replica (TERM, then KILL); data stays
#   ./run_cluster.sh clean         stop, then delete .cluster/ (data and logs)
#
# Replica K listens on 127.0.0.1:(QKV_BASE_PORT + K - 1) and runs as
#   quorumkv --id K --peers 127.0.0.1:P1,... --data-dir .cluster/data/K $QKV_FLAGS
# State lives in .cluster/ next to this script: ports, flags, pids/, logs/K.log, data/K/.
#
# Environment:
#   QKV_BASE_PORT        first port (default 7001)
#   QKV_FLAGS            extra server flags, e.g. "--fsync never"; restart reuses them
#   QKV_BIN              use this server binary instead of building one
#   QKV_START_TIMEOUT_S  how long start waits for every replica to answer STATUS (default 10)
#
# Needs bash and, unless QKV_BIN is set, cargo. Uses ss and timeout when present;
# otherwise bash's /dev/tcp does the probing.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

readonly STATE=.cluster
readonly ME=./run_cluster.sh
# Replica ids are a u8 on the wire and in the protocol.
readonly REPLICAS_MAX=255
# How long stop waits after SIGTERM before it sends SIGKILL.
readonly STOP_TIMEOUT_S=5
START_TIMEOUT_S=${QKV_START_TIMEOUT_S:-10}
DEFAULT_BIN="${CARGO_TARGET_DIR:-target}/release/quorumkv"

# Filled by load_state: PORTS[K-1] is replica K's port; BIN runs every replica.
PORTS=()
BIN=

die() {
    printf '%s: %s\n' "${ME#./}" "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"
}

usage_error() {
    printf '%s: %s\n\n' "${ME#./}" "$*" >&2
    usage >&2
    exit 2
}

# A positive decimal without leading zeros and short enough for bash arithmetic.
is_number() {
    [[ $1 =~ ^[1-9][0-9]{0,4}$ ]]
}

# Runs "$@" for at most $1 seconds where coreutils timeout exists.
bounded() {
    local seconds=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout "$seconds" "$@"
    else
        "$@"
    fi
}

# True if something accepts TCP connections on 127.0.0.1:$1 (or ss lists a listener on it).
port_in_use() {
    local port=$1
    if command -v ss >/dev/null 2>&1 && [[ -n "$(ss -Htln "sport = :$port" 2>/dev/null)" ]]; then
        return 0
    fi
    # shellcheck disable=SC2016 # $1 belongs to the inner bash.
    bounded 2 "$BASH" -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$port" 2>/dev/null
}

# Sends STATUS to 127.0.0.1:$1 and prints the first reply line; fails if none comes within 2 s.
ask_status() {
    local reply
    # shellcheck disable=SC2016 # $1 and $line belong to the inner bash.
    reply=$(bounded 3 "$BASH" -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "STATUS\n" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        printf "%s\n" "$line"' _ "$1" 2>/dev/null) || return 1
    printf '%s\n' "${reply%$'\r'}"
}

# True if process $1 exists and is not a zombie (a replica that exited while this script,
# its parent, still runs).
is_alive() {
    local stat
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 1
    [[ -r /proc/$1/stat ]] || return 0
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# True if $2 is the live process of replica $1, and not a pid since reused by another program.
is_replica() {
    local id=$1 pid=$2 cmdline
    is_alive "$pid" || return 1
    # Where /proc exists, check the command line: a pid from an old crash may now be someone else's.
    [[ -r /proc/$pid/cmdline ]] || return 0
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"--data-dir $STATE/data/$id "* ]]
}

pid_of() {
    local file="$STATE/pids/$1.pid"
    [[ -r $file ]] && cat "$file"
    return 0
}

is_running() {
    is_replica "$1" "$(pid_of "$1")"
}

# Reads the cluster's shape from .cluster/ (fails if no cluster was ever started here).
load_state() {
    [[ -r $STATE/ports ]] || die "no cluster here ($STATE/ports is missing); start one with $ME"
    PORTS=()
    local port
    while IFS= read -r port; do
        [[ -n $port ]] && PORTS+=("$port")
    done <"$STATE/ports"
    ((${#PORTS[@]} > 0)) || die "$STATE/ports is empty; $ME clean, then start again"
    BIN=$DEFAULT_BIN
    [[ -r $STATE/bin ]] && BIN=$(cat "$STATE/bin")
    return 0
}

# Checks that $1 names a replica of the loaded cluster.
check_id() {
    if ! { is_number "$1" && (($1 <= ${#PORTS[@]})); }; then
        die "no replica '$1': this cluster has replicas 1 to ${#PORTS[@]}"
    fi
}

peer_list() {
    local peers="" port
    for port in "${PORTS[@]}"; do
        peers+="${peers:+,}127.0.0.1:$port"
    done
    printf '%s' "$peers"
}

# Starts replica $1 in the background with the saved flags; its output goes to its log.
launch() {
    local id=$1 flags=() data="$STATE/data/$1" log="$STATE/logs/$1.log"
    # The flags are split on whitespace; quotes inside QKV_FLAGS are not interpreted.
    [[ -r $STATE/flags ]] && read -r -a flags <"$STATE/flags"
    local cmd=("$BIN" --id "$id" --peers "$(peer_list)" --data-dir "$data" ${flags[@]+"${flags[@]}"})
    mkdir -p "$data" "$STATE/logs" "$STATE/pids"
    printf '=== %s run_cluster.sh: starting replica %s: %s\n' "$(date '+%F %T')" "$id" "${cmd[*]}" >>"$log"
    # SIGHUP is ignored so closing the terminal does not take the cluster down with it.
    (
        trap '' HUP
        exec "${cmd[@]}"
    ) >>"$log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$STATE/pids/$id.pid"
}

# Prints the last lines replica $1 logged since it was last started.
log_tail() {
    awk '/^=== .* run_cluster.sh: starting replica /{n = 0} {line[n++] = $0}
        END {for (i = (n > 15 ? n - 15 : 0); i < n; i++) print line[i]}' "$STATE/logs/$1.log" || true
}

# Waits until each replica in "$@" answers STATUS. Returns 1 at once if one exits (its log
# tail is shown), 2 if one is still silent at the deadline (it is left running).
wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT_S)) pending=("$@") silent id dead=() code
    while true; do
        silent=()
        for id in "${pending[@]}"; do
            # Just launched, so the pid is ours even before exec shows the replica's command line.
            if ! is_alive "$(pid_of "$id")"; then
                dead+=("$id")
            elif ! ask_status "${PORTS[id - 1]}" | grep -q '^STATUS '; then
                silent+=("$id")
            fi
        done
        if ((${#dead[@]} > 0)); then
            for id in "${dead[@]}"; do
                # This shell launched it, so it can collect the exit status.
                code=0
                wait "$(pid_of "$id")" 2>/dev/null || code=$?
                printf '\nreplica %s exited while starting (status %s); the end of %s:\n' \
                    "$id" "$code" "$STATE/logs/$id.log" >&2
                log_tail "$id" >&2
            done
            return 1
        fi
        ((${#silent[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            for id in "${silent[@]}"; do
                printf '\nreplica %s (pid %s) is running but did not answer STATUS on port %s within %s s; the end of %s:\n' \
                    "$id" "$(pid_of "$id")" "${PORTS[id - 1]}" "$START_TIMEOUT_S" "$STATE/logs/$id.log" >&2
                log_tail "$id" >&2
            done
            printf '\nIt was left running: %s status shows it, %s stop stops everything.\n' "$ME" "$ME" >&2
            return 2
        fi
        pending=("${silent[@]}")
        sleep 0.2
    done
}

# Builds the server unless QKV_BIN names one; sets BIN.
build() {
    if [[ -n ${QKV_BIN:-} ]]; then
        BIN=$QKV_BIN
        [[ -x $BIN ]] || die "QKV_BIN=$BIN is not an executable file"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust (https://rustup.rs), or set QKV_BIN to a built quorumkv"
    echo "building: cargo build --release"
    cargo build --release || die "the build failed (see above)"
    BIN=$DEFAULT_BIN
    [[ -x $BIN ]] || die "the build finished but $BIN is missing"
}

running_ids() {
    local file id
    for file in "$STATE"/pids/*.pid; do
        [[ -e $file ]] || continue
        id=${file##*/}
        id=${id%.pid}
        is_running "$id" && printf '%s ' "$id"
    done
    return 0
}

cmd_start() {
    local n=$1 base=${QKV_BASE_PORT:-7001} running id port taken=() ports=() ids=() rc=0 saved
    if ! { is_number "$n" && ((n <= REPLICAS_MAX)); }; then
        usage_error "N must be a number from 1 to $REPLICAS_MAX, not '$n'"
    fi
    if ! { is_number "$base" && ((base + n - 1 <= 65535)); }; then
        die "QKV_BASE_PORT=$base: need a port number with room for $n ports up to 65535"
    fi
    is_number "$START_TIMEOUT_S" || die "QKV_START_TIMEOUT_S=$START_TIMEOUT_S is not a number of seconds"
    running=$(running_ids)
    [[ -z $running ]] ||
        die "a cluster is already running here (replicas ${running% }); $ME status shows it, $ME stop stops it"

    for ((id = 1; id <= n; id++)); do
        ports+=($((base + id - 1)))
        ids+=("$id")
    done
    # Data written by a cluster of another shape would be refused by the replicas (the peer
    # list is part of a data directory's identity), so say so before starting anything.
    if [[ -d $STATE/data && -r $STATE/ports ]]; then
        load_state
        saved="${PORTS[*]}"
        if [[ $saved != "${ports[*]}" ]]; then
            die "$STATE/data holds the data of a cluster on ports $saved; start that one again" \
                "(QKV_BASE_PORT=${PORTS[0]} $ME ${#PORTS[@]}), or run $ME clean to delete it"
        fi
        echo "reusing the data in $STATE/data ($ME clean deletes it)"
    fi

    build
    for port in "${ports[@]}"; do
        port_in_use "$port" && taken+=("$port")
    done
    if ((${#taken[@]} > 0)); then
        die "port(s) ${taken[*]} on 127.0.0.1 already in use; pick another range," \
            "e.g. QKV_BASE_PORT=$((base + 1000)) $ME $n"
    fi

    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/data"
    printf '%s\n' "${ports[@]}" >"$STATE/ports"
    printf '%s\n' "${QKV_FLAGS:-}" >"$STATE/flags"
    printf '%s\n' "$BIN" >"$STATE/bin"
    rm -f "$STATE"/pids/*.pid
    load_state

    trap 'echo >&2; echo "interrupted: replicas started so far keep running; $ME stop stops them" >&2; exit 130' INT
    for ((id = 1; id <= n; id++)); do
        launch "$id"
    done
    echo "started $n replicas; waiting up to $START_TIMEOUT_S s for each to answer STATUS"
    wait_ready "${ids[@]}" || rc=$?
    if ((rc == 1)) && [[ -n "$(running_ids)" ]]; then
        echo "stopping the other replicas, since the cluster did not come up whole" >&2
        cmd_stop >&2
    fi
    ((rc == 0)) || exit 1
    trap - INT
    print_welcome
}

print_welcome() {
    local id
    echo
    echo "quorumkv: ${#PORTS[@]} replicas running on 127.0.0.1 (state, logs and data in $STATE/)"
    for ((id = 1; id <= ${#PORTS[@]}; id++)); do
        printf '  replica %-3s 127.0.0.1:%-5s  pid %-7s  log %s\n' \
            "$id" "${PORTS[id - 1]}" "$(pid_of "$id")" "$STATE/logs/$id.log"
    done
    cat <<EOF

Talk to any replica with nc, one command per line (HELP lists them all):
  nc 127.0.0.1 ${PORTS[0]}
  PUT greeting hello
  GET greeting
  STATUS
No nc?  $ME client [ID]        (default ID 1)
Crash and recover one:  $ME kill 2;  $ME status;  $ME restart 2
Stop:   $ME stop   (data kept in $STATE/data; $ME clean deletes it)
EOF
}

# Stops replicas "$@" (default: all with a pid file): SIGTERM, a bounded wait, then SIGKILL.
stop_ids() {
    local id pid live=() deadline=$((SECONDS + STOP_TIMEOUT_S)) left
    for id in "$@"; do
        pid=$(pid_of "$id")
        if is_replica "$id" "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            live+=("$id")
        fi
    done
    while ((${#live[@]} > 0)); do
        left=()
        for id in "${live[@]}"; do
            if is_running "$id"; then
                left+=("$id")
            else
                echo "replica $id stopped"
            fi
        done
        live=(${left[@]+"${left[@]}"})
        ((${#live[@]} == 0)) && break
        if ((SECONDS >= deadline)); then
            for id in "${live[@]}"; do
                kill -KILL "$(pid_of "$id")" 2>/dev/null || true
                echo "replica $id did not stop within $STOP_TIMEOUT_S s of SIGTERM: killed"
            done
            break
        fi
        sleep 0.1
    done
    for id in "$@"; do
        rm -f "$STATE/pids/$id.pid"
    done
}

cmd_stop() {
    local ids=() file id
    for file in "$STATE"/pids/*.pid; do
        [[ -e $file ]] || continue
        id=${file##*/}
        ids+=("${id%.pid}")
    done
    if ((${#ids[@]} == 0)); then
        echo "no replicas running"
        return 0
    fi
    stop_ids "${ids[@]}"
}

cmd_status() {
    load_state
    local id pid reply all_up=0
    for ((id = 1; id <= ${#PORTS[@]}; id++)); do
        pid=$(pid_of "$id")
        printf 'replica %-3s 127.0.0.1:%-5s ' "$id" "${PORTS[id - 1]}"
        if [[ -z $pid ]]; then
            echo "not running"
            all_up=1
        elif ! is_replica "$id" "$pid"; then
            echo "pid $pid dead      ($ME restart $id)"
            all_up=1
        elif reply=$(ask_status "${PORTS[id - 1]}"); then
            echo "pid $pid alive  $reply"
        else
            echo "pid $pid alive  (no answer to STATUS; see $STATE/logs/$id.log)"
            all_up=1
        fi
    done
    return "$all_up"
}

cmd_kill() {
    load_state
    check_id "$1"
    local pid
    pid=$(pid_of "$1")
    is_replica "$1" "$pid" || die "replica $1 is not running"
    kill -KILL "$pid"
    echo "replica $1 (pid $pid) killed with SIGKILL; $ME restart $1 brings it back"
}

cmd_restart() {
    load_state
    check_id "$1"
    local id=$1 port=${PORTS[$1 - 1]}
    [[ -x $BIN ]] || die "no server binary at $BIN; run $ME to build and start"
    is_running "$id" && stop_ids "$id"
    port_in_use "$port" && die "port $port is in use by another program; replica $id cannot listen there"
    launch "$id"
    wait_ready "$id" || exit 1
    echo "replica $id running again: 127.0.0.1:$port, pid $(pid_of "$id"), log $STATE/logs/$id.log"
}

cmd_client() {
    local id=$1 port
    is_number "$id" || usage_error "client takes a replica id, not '$id'"
    if [[ -r $STATE/ports ]]; then
        load_state
        check_id "$id"
        port=${PORTS[id - 1]}
    else
        BIN=$DEFAULT_BIN
        port=$((${QKV_BASE_PORT:-7001} + id - 1))
    fi
    [[ -x $BIN ]] || die "no quorumkv binary at $BIN; run $ME (it builds) or cargo build --release"
    exec "$BIN" client "127.0.0.1:$port"
}

cmd_clean() {
    cmd_stop
    rm -rf "$STATE"
    echo "removed $STATE/ (data and logs)"
}

main() {
    local command=${1:-start}
    if (($# > 0)); then shift; fi
    case $command in
    start)
        (($# <= 1)) || usage_error "start takes at most one argument, N"
        cmd_start "${1:-3}"
        ;;
    [0-9]*)
        (($# == 0)) || usage_error "unexpected argument '$1'"
        cmd_start "$command"
        ;;
    stop | clean | status)
        (($# == 0)) || usage_error "$command takes no arguments"
        "cmd_$command"
        ;;
    kill | restart)
        (($# == 1)) || usage_error "$command takes one replica id: $ME $command ID"
        "cmd_$command" "$1"
        ;;
    client)
        (($# <= 1)) || usage_error "client takes at most one replica id"
        cmd_client "${1:-1}"
        ;;
    help | -h | --help)
        usage
        ;;
    *)
        usage_error "unknown command '$command'"
        ;;
    esac
}

main "$@"
