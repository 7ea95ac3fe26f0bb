#!/usr/bin/env bash
# A shared MLflow tracking server on this machine: PostgreSQL as the backend store, the server's proxied artifact
# store (mlflow-artifacts:/) on local disk, both listening on 127.0.0.1 only.
#
#   scripts/mlflow_server.sh start     # install PostgreSQL if missing (root), init, start both; prints the URI last
#   scripts/mlflow_server.sh stop      # MLflow, then PostgreSQL (pg_ctl stop -m fast)
#   scripts/mlflow_server.sh status    # what runs (exit 0 when both run, 3 otherwise)
#   scripts/mlflow_server.sh uri       # the tracking URI, e.g. http://127.0.0.1:5050
#   scripts/mlflow_server.sh install   # only install PostgreSQL's server binaries (apt-get, as root)
#   (stop-mlflow, stop-postgres: one of the two alone, for fault tests; `start` brings it back)
#
#   export MLFLOW_TRACKING_URI=$(scripts/mlflow_server.sh start | tail -n 1)
#
# State (git-ignored): $REALFAKE_SERVER_DIR, default <repo>/.cache/mlflow-server:
#   pg/            the PostgreSQL cluster (PGDATA, owned by the `postgres` user when run as root) and its unix socket
#   pg-password    the generated password of the database role `mlflow` (mode 0600)
#   pgpass         libpq's password file for it (0600): the server gets it as PGPASSFILE, so the password is on no
#                  command line and in no URI
#   artifacts/     the proxied artifact store (--artifacts-destination)
#   postgres.log, mlflow.log, mlflow.pid, mlflow.port, pg.port
#
# Environment:
#   REALFAKE_SERVER_DIR     the state folder above
#   REALFAKE_VENV           the virtual environment whose `mlflow` runs the server (default <repo>/.venv); it needs
#                           psycopg2: pip install -e '.[server]'
#   REALFAKE_PG_PORT        PostgreSQL's TCP port on 127.0.0.1 (default 55432)
#   REALFAKE_MLFLOW_PORT    the tracking server's port on 127.0.0.1 (default 5050)
#   REALFAKE_MLFLOW_WORKERS uvicorn worker processes (default 1: with more, uvicorn 0.54 on asyncio's own loop hands its
#                           workers a listening socket without TCP_NODELAY, and every request on a kept-alive
#                           connection waits ~40 ms for a delayed ACK, https://github.com/Kludex/uvicorn/issues/3149;
#                           uvloop, from uvicorn[standard], sets it itself. One worker serves requests in threads.)
#   REALFAKE_START_TIMEOUT  seconds to wait for each server to answer (default 180)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  default false here: MLflow's GenAI job runner is 8 more processes, ~1 GiB
#
# Authentication: the role `mlflow` logs in over TCP 127.0.0.1 with a random password (scram-sha-256) that `start`
# generates once; no other TCP login is accepted. A TCP listener cannot tell local users apart, so `trust` on
# 127.0.0.1 would let any process on this machine in. Administration (creating the role and the database) goes
# through the unix socket inside PGDATA, whose 0700 folder only the cluster's owner (and root) can enter.
# The MLflow server itself has no authentication: anyone who can reach 127.0.0.1:PORT on this machine can use it.
set -euo pipefail

PROG=$(basename "$0")
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)

STATE=${REALFAKE_SERVER_DIR:-$REPO/.cache/mlflow-server}
VENV=${REALFAKE_VENV:-$REPO/.venv}
WORKERS=${REALFAKE_MLFLOW_WORKERS:-1}
START_TIMEOUT=${REALFAKE_START_TIMEOUT:-180}
HOST=127.0.0.1
DB_NAME=mlflow
DB_USER=mlflow
PG_SUPERUSER=postgres

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}
say() { echo "$PROG: $*" >&2; }  # progress goes to stderr: stdout carries only the URI

# ---------------------------------------------------------------------------------------------------------- paths
mkdir_state() {
    mkdir -p "$STATE" || die "cannot create the state folder $STATE"
    STATE=$(cd "$STATE" && pwd)  # absolute: PostgreSQL and MLflow get absolute paths
}
resolve_state() {  # without creating it (status, stop, uri)
    if [[ -d $STATE ]]; then STATE=$(cd "$STATE" && pwd); fi
}
set_paths() {
    PGDATA_DIR=$STATE/pg
    PGPASS_FILE=$STATE/pgpass
    PASSWORD_FILE=$STATE/pg-password
    ARTIFACTS_DIR=$STATE/artifacts
    PG_LOG=$STATE/postgres.log
    MLFLOW_LOG=$STATE/mlflow.log
    MLFLOW_PID_FILE=$STATE/mlflow.pid
    MLFLOW_PORT_FILE=$STATE/mlflow.port
    PG_PORT_FILE=$STATE/pg.port
}

# A port: the environment's, else the one the running (or last) server used, else the default.
port_of() {  # env_value file default
    local value=$1 file=$2 default=$3
    if [[ -z $value && -f $file ]]; then value=$(<"$file"); fi
    value=${value:-$default}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then die "not a TCP port: '$value'"; fi
    echo "$value"
}

# ---------------------------------------------------------------------------------------------- running as whom
is_root() { [[ $(id -u) -eq 0 ]]; }

# Run a PostgreSQL program as the cluster's owner: `postgres` when we are root (initdb and postgres refuse root),
# else ourselves. From / so that a cwd the postgres user cannot enter (e.g. /root) does not bother them.
as_pg() {
    if is_root; then
        if command -v runuser >/dev/null; then
            (cd / && runuser -u postgres -- "$@")
        else
            local quoted
            quoted=$(printf '%q ' "$@")
            (cd / && su -s /bin/sh postgres -c "$quoted")
        fi
    else
        (cd / && "$@")
    fi
}

# ------------------------------------------------------------------------------------------------------ install
find_pgbin() {
    local dir best=""
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres && -x $dir/psql ]] || continue
        # the newest major version: sort -V on the version folder
        if [[ -z $best ]] || [[ $(printf '%s\n%s\n' "$best" "$dir" | sort -V | tail -n 1) == "$dir" ]]; then
            best=$dir
        fi
    done
    [[ -n $best ]] && echo "$best"
}

cluster_pgbin() {  # the binaries of the cluster's own major version (a newer one cannot open it), else the newest
    if [[ -n ${PGDATA_DIR:-} && -f $PGDATA_DIR/PG_VERSION ]]; then
        local version dir
        version=$(<"$PGDATA_DIR/PG_VERSION") 2>/dev/null || version=""
        dir=/usr/lib/postgresql/$version/bin
        if [[ -n $version && -x $dir/pg_ctl ]]; then
            echo "$dir"
            return 0
        fi
        [[ -z $version ]] || die "the cluster in $PGDATA_DIR is PostgreSQL $version, whose binaries are missing:
  apt-get install postgresql-$version, or remove $PGDATA_DIR (its runs and models with it)"
    fi
    find_pgbin
}

install_postgres() {
    if PGBIN=$(cluster_pgbin); then
        return 0
    fi
    is_root || die "PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/{initdb,pg_ctl}) are missing.
  Install them as root: sudo apt-get install -y postgresql   (or run this script as root once)"
    command -v apt-get >/dev/null || die "PostgreSQL is missing and there is no apt-get to install it with"
    say "installing PostgreSQL (apt-get install postgresql postgresql-client) ..."
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    apt-get update -q >&2 || die "apt-get update failed"
    # First postgresql-common alone, to tell its postinst not to create (and start) the system cluster 'main' on
    # port 5432: this script runs its own cluster and nothing else should listen.
    apt-get install "${apt_opts[@]}" postgresql-common >&2 || die "apt-get install postgresql-common failed"
    local conf=/etc/postgresql-common/createcluster.conf
    if [[ -f $conf ]]; then
        if grep -qE '^[#[:space:]]*create_main_cluster' "$conf"; then
            sed -i -E 's/^[#[:space:]]*create_main_cluster.*/create_main_cluster = false/' "$conf"
        else
            echo 'create_main_cluster = false' >>"$conf"
        fi
    fi
    apt-get install "${apt_opts[@]}" postgresql postgresql-client >&2 || die "apt-get install postgresql failed"
    PGBIN=$(cluster_pgbin) || die "installed postgresql, yet no /usr/lib/postgresql/*/bin/{initdb,pg_ctl,postgres,psql}"
}

# ----------------------------------------------------------------------------------------------------- postgres
pg_running() {  # is the cluster in $PGDATA_DIR up? (pg_ctl status reads postmaster.pid and signals the pid)
    [[ -f $PGDATA_DIR/postmaster.pid ]] || return 1
    local pgbin
    pgbin=$(cluster_pgbin 2>/dev/null) || return 1
    as_pg "$pgbin/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1
}

port_in_use() {  # port: does anything accept TCP connections on 127.0.0.1:port?
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

check_pg_traversable() {
    # As root the cluster belongs to `postgres`, who must be able to walk down to PGDATA (pytest's and mktemp's
    # folders are 0700 root): say so instead of letting initdb fail obscurely.
    is_root || return 0
    as_pg test -x "$STATE" -a -w "$PGDATA_DIR" 2>/dev/null || die "the postgres user cannot enter $PGDATA_DIR
  (every folder above it needs o+x). Choose a state folder it can reach, e.g. REALFAKE_SERVER_DIR=<repo>/.cache/..."
}

init_cluster() {
    [[ -f $PGDATA_DIR/PG_VERSION ]] && return 0
    if [[ -e $PGDATA_DIR ]] && [[ -n $(ls -A "$PGDATA_DIR" 2>/dev/null) ]]; then
        die "$PGDATA_DIR exists but holds no PostgreSQL cluster; remove it or choose another REALFAKE_SERVER_DIR"
    fi
    say "initialising a PostgreSQL cluster in $PGDATA_DIR"
    mkdir -p "$PGDATA_DIR"
    chmod 0700 "$PGDATA_DIR"
    if is_root; then chown postgres:postgres "$PGDATA_DIR"; fi
    check_pg_traversable
    # Local (unix socket) logins: trust, for the superuser only; the socket lives in PGDATA (0700), so only the
    # cluster's owner and root reach it. TCP: only `mlflow` into `mlflow`, from 127.0.0.1, with its password.
    as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U "$PG_SUPERUSER" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$STATE/initdb.log" 2>&1 ||
        die "initdb failed; see $STATE/initdb.log:
$(tail -n 20 "$STATE/initdb.log")"
    as_pg sh -c "cat > '$PGDATA_DIR/pg_hba.conf'" <<EOF
# written by scripts/mlflow_server.sh
# TYPE  DATABASE  USER          ADDRESS         METHOD
local   all       $PG_SUPERUSER                   trust
host    $DB_NAME  $DB_USER      127.0.0.1/32    scram-sha-256
EOF
    as_pg sh -c "cat >> '$PGDATA_DIR/postgresql.conf'" <<EOF

# scripts/mlflow_server.sh: 127.0.0.1 only; the port and the socket folder come with each start (pg_ctl -o)
listen_addresses = '$HOST'
password_encryption = scram-sha-256
max_connections = 100
EOF
}

start_postgres() {
    local port=$1
    if pg_running; then
        local running_port
        running_port=$(sed -n 4p "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)
        if [[ -n $running_port && $running_port != "$port" ]]; then
            die "PostgreSQL already runs on port $running_port, not $port; stop it first ($PROG stop)"
        fi
        return 0
    fi
    if port_in_use "$port"; then
        die "port $port on $HOST is taken by another program; choose another with REALFAKE_PG_PORT=<port>"
    fi
    # the socket path has a limit of 107 bytes
    local socket=$PGDATA_DIR/.s.PGSQL.$port
    ((${#socket} < 104)) || die "the socket path $socket is too long for a unix socket; choose a shorter REALFAKE_SERVER_DIR"
    if [[ ! -e $PG_LOG ]]; then : >"$PG_LOG"; fi
    if is_root; then chown postgres:postgres "$PG_LOG"; fi
    say "starting PostgreSQL on $HOST:$port"
    as_pg "$PGBIN/pg_ctl" start -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$START_TIMEOUT" \
        -o "-p $port -k '$PGDATA_DIR' -c listen_addresses=$HOST" >&2 ||
        die "PostgreSQL did not start; see $PG_LOG:
$(tail -n 20 "$PG_LOG")"
    echo "$port" >"$PG_PORT_FILE"
}

psql_admin() {  # port, SQL on stdin
    as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGDATA_DIR" -p "$1" -U "$PG_SUPERUSER" -d postgres >&2
}

ensure_database() {
    local port=$1 password
    if [[ ! -s $PASSWORD_FILE ]]; then
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSWORD_FILE.tmp")
        mv "$PASSWORD_FILE.tmp" "$PASSWORD_FILE"
    fi
    password=$(<"$PASSWORD_FILE")
    # libpq's password file (host:port:database:user:password), rewritten at each start since the port may change
    (umask 077 && echo "$HOST:$port:$DB_NAME:$DB_USER:$password" >"$PGPASS_FILE")
    chmod 0600 "$PGPASS_FILE" "$PASSWORD_FILE"
    # the password travels on stdin only (not in argv); hex, so nothing to quote
    psql_admin "$port" <<EOF || die "could not create the role and database '$DB_NAME' (see $PG_LOG)"
SELECT format('CREATE ROLE %I LOGIN', '$DB_USER') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER')
\gexec
ALTER ROLE $DB_USER WITH LOGIN PASSWORD '$password';
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$DB_USER')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')
\gexec
EOF
}

stop_postgres() {
    if ! pg_running; then
        say "PostgreSQL is not running"
        return 0
    fi
    local pgbin
    pgbin=$(cluster_pgbin)
    say "stopping PostgreSQL"
    as_pg "$pgbin/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t 60 >&2 || die "pg_ctl stop failed; see $PG_LOG"
}

# ------------------------------------------------------------------------------------------------------- mlflow
mlflow_pid() {  # the pid of our running server, if any
    [[ -f $MLFLOW_PID_FILE ]] || return 1
    local pid
    pid=$(<"$MLFLOW_PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # not some other process that inherited the pid
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "mlflow.* server" || return 1
    echo "$pid"
}

healthy() {  # port: does GET /health answer 200?
    local url="http://$HOST:$1/health"
    if command -v curl >/dev/null; then
        curl -fsS --max-time 3 -o /dev/null "$url" 2>/dev/null
    else
        "$VENV/bin/python" - "$url" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as response:
    sys.exit(0 if response.status == 200 else 1)
EOF
    fi
}

check_venv() {
    [[ -x $VENV/bin/mlflow ]] || die "no mlflow in $VENV/bin (set REALFAKE_VENV, or create it: make test / pip install -e '.[server]')"
    [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "REALFAKE_MLFLOW_WORKERS must be a positive number, not '$WORKERS'"
    if ((WORKERS > 1)) && ! "$VENV/bin/python" -c 'import uvloop' 2>/dev/null; then
        say "warning: $WORKERS uvicorn workers without uvloop: each request on a kept-alive connection will wait ~40 ms
  (no TCP_NODELAY, Kludex/uvicorn#3149); install uvicorn[standard] or keep REALFAKE_MLFLOW_WORKERS=1"
    fi
    if ! "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null; then
        die "MLflow needs the PostgreSQL driver psycopg2, which $VENV lacks. Install the project's server extra:
  $VENV/bin/pip install -e '${REPO}[server]'"
    fi
}

start_mlflow() {
    local port=$1 pg_port=$2 pid
    if pid=$(mlflow_pid); then
        local running_port
        running_port=$(cat "$MLFLOW_PORT_FILE" 2>/dev/null || true)
        if [[ -n $running_port && $running_port != "$port" ]]; then
            die "the MLflow server already runs on port $running_port, not $port; stop it first ($PROG stop)"
        fi
        if healthy "$port"; then return 0; fi
        say "the MLflow server (pid $pid) runs but does not answer yet; waiting"
    else
        if port_in_use "$port"; then
            die "port $port on $HOST is taken by another program; choose another with REALFAKE_MLFLOW_PORT=<port>"
        fi
        mkdir -p "$ARTIFACTS_DIR"
        say "starting the MLflow server on $HOST:$port (log: $MLFLOW_LOG)"
        # postgresql+psycopg2: SQLAlchemy >= 2.1 takes a bare postgresql:// for psycopg (3); the server extra installs
        # psycopg2-binary. setsid: its own process group, so that `stop` reaches the uvicorn workers too; PGPASSFILE: libpq reads
        # the password from there. No telemetry (the machine may have no internet; nothing should leave it).
        # MLFLOW_SERVER_ENABLE_JOB_EXECUTION: off unless asked for; the GenAI job runner (scorers, prompt
        # optimisation) is 8 more processes and about 1 GiB that this project does not use. cwd: the state folder,
        # so that nothing lands where the script was called from.
        (
            cd "$STATE"
            PGPASSFILE=$PGPASS_FILE MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
                MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
                exec setsid "$VENV/bin/mlflow" server \
                --backend-store-uri "postgresql+psycopg2://$DB_USER@$HOST:$pg_port/$DB_NAME" \
                --artifacts-destination "$ARTIFACTS_DIR" \
                --host "$HOST" --port "$port" --workers "$WORKERS" \
                </dev/null >>"$MLFLOW_LOG" 2>&1
        ) &
        pid=$!
        echo "$pid" >"$MLFLOW_PID_FILE"
        echo "$port" >"$MLFLOW_PORT_FILE"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until healthy "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$MLFLOW_PID_FILE"
            die "the MLflow server exited during its start; see $MLFLOW_LOG:
$(tail -n 30 "$MLFLOW_LOG")"
        fi
        if ((SECONDS >= deadline)); then
            die "the MLflow server did not answer GET /health within ${START_TIMEOUT}s; see $MLFLOW_LOG
  (raise REALFAKE_START_TIMEOUT, or '$PROG stop' and retry)"
        fi
        sleep 0.5
    done
}

group_alive() {  # pgid: does a process of that group still run? (zombies left to a non-reaping init do not count)
    # /proc/PID/stat: "pid (comm) state ppid pgrp ...", comm may hold spaces; no `ps` needed (slim images lack it)
    local stat line state pgrp
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        read -r state _ pgrp _ <<<"${line##*) }"
        if [[ $pgrp == "$1" && $state != Z ]]; then return 0; fi
    done
    return 1
}

stop_mlflow() {
    local pid
    if ! pid=$(mlflow_pid); then
        say "the MLflow server is not running"
        rm -f "$MLFLOW_PID_FILE"
        return 0
    fi
    say "stopping the MLflow server (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while group_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            say "the MLflow server ignored SIGTERM for 30 s; killing it"
            kill -KILL -- "-$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$MLFLOW_PID_FILE"
}

# ----------------------------------------------------------------------------------------------------- commands
cmd_start() {
    check_venv
    mkdir_state
    set_paths
    local pg_port mlflow_port
    pg_port=$(port_of "${REALFAKE_PG_PORT:-}" "$PG_PORT_FILE" 55432)
    mlflow_port=$(port_of "${REALFAKE_MLFLOW_PORT:-}" "$MLFLOW_PORT_FILE" 5050)
    # a running cluster keeps its port whatever the file says
    if pg_running && [[ -z ${REALFAKE_PG_PORT:-} ]]; then
        pg_port=$(sed -n 4p "$PGDATA_DIR/postmaster.pid")
    fi
    if ! mlflow_pid >/dev/null && port_in_use "$mlflow_port"; then  # before PostgreSQL starts in vain
        die "port $mlflow_port on $HOST is taken by another program; choose another with REALFAKE_MLFLOW_PORT=<port>"
    fi
    install_postgres
    init_cluster
    check_pg_traversable
    start_postgres "$pg_port"
    ensure_database "$pg_port"
    start_mlflow "$mlflow_port" "$pg_port"
    echo "http://$HOST:$mlflow_port"
}

cmd_stop() {
    resolve_state
    set_paths
    stop_mlflow
    stop_postgres
}

cmd_status() {
    resolve_state
    set_paths
    local code=0 pid port
    port=$(port_of "${REALFAKE_MLFLOW_PORT:-}" "$MLFLOW_PORT_FILE" 5050)
    if pid=$(mlflow_pid); then
        if healthy "$port"; then
            echo "mlflow: running (pid $pid) at http://$HOST:$port"
        else
            echo "mlflow: process $pid runs, but http://$HOST:$port/health does not answer"
            code=3
        fi
    else
        echo "mlflow: not running"
        code=3
    fi
    if pg_running; then
        echo "postgres: running on $HOST:$(sed -n 4p "$PGDATA_DIR/postmaster.pid"), data in $PGDATA_DIR"
    else
        echo "postgres: not running"
        code=3
    fi
    echo "state: $STATE"
    return $code
}

cmd_uri() {
    resolve_state
    set_paths
    echo "http://$HOST:$(port_of "${REALFAKE_MLFLOW_PORT:-}" "$MLFLOW_PORT_FILE" 5050)"
}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
uri) cmd_uri ;;
stop-mlflow) # fault tests: the MLflow server alone (`start` brings it back)
    resolve_state
    set_paths
    stop_mlflow
    ;;
stop-postgres) # fault tests: PostgreSQL alone, under a running MLflow server (`start` brings it back)
    resolve_state
    set_paths
    stop_postgres
    ;;
install)
    install_postgres
    say "PostgreSQL binaries: $PGBIN"
    ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
