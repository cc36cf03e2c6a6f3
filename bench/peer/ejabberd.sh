#!/usr/bin/env bash
# A private ejabberd 23.01 (Debian package) for `natter-bench xmpp`, so Natter and a
# mature XMPP server are measured by one harness on one machine.
#
#   bench/peer/ejabberd.sh start <nomam|mam-pg> <dir>   # prints how to reach it
#   bench/peer/ejabberd.sh stop <dir>                   # stops what `start` started
#
# Modes:
#   nomam    no message archive: a message is routed from the sender's session to the
#            receiver's and nothing is persisted (the lower bound of server work).
#   mam-pg   mod_mam (XEP-0313) with `default: always` on a PostgreSQL 15 cluster this
#            script creates (initdb into <dir>/pg, 127.0.0.1:$PG_PORT, ejabberd's
#            /usr/share/ejabberd/sql/pg.sql schema). Every message is stored twice, once in
#            each party's archive: ejabberd's per-user archive model. The sender's
#            session writes synchronously, so its stream-management ack comes after the
#            write (~1 ms more send → ack at low load). Only the archive is on SQL;
#            accounts, rosters and sessions stay in Mnesia in both modes, so the modes
#            differ by the archive alone. PostgreSQL runs with its durable defaults
#            (fsync, synchronous_commit on).
#
# Choices, and why:
#   - Own node, own everything: config, spool (Mnesia), logs and the PostgreSQL cluster
#     live in <dir>; the Erlang node is `ejabberd-bench@localhost`; Erlang distribution
#     listens on 127.0.0.1:$DIST_PORT without epmd (ERL_DIST_PORT), so nothing is shared
#     with, or left behind for, a system ejabberd. ejabberdctl runs the VM as the
#     `ejabberd` user (it does so whenever called as root), PostgreSQL as `postgres`.
#   - c2s on 127.0.0.1:$EJABBERD_PORT, plain TCP, no STARTTLS, SASL PLAIN, no shaper, no
#     s2s, no HTTP listener: the benchmark measures routing and storage, not TLS.
#   - Accounts: internal auth (Mnesia) with plain passwords, all `$PREFIX<i>@localhost`
#     for i in 0..$USERS with password $PASSWORD, created in one `import_piefxis`
#     (XEP-0227) call. Rejected: `ejabberdctl register` per user (one Erlang VM start per
#     account, minutes for thousands); anonymous login (chosen names work, but an
#     anonymous account, and with it its archive, is deleted at logout, so nothing would
#     stay persisted); external auth (a helper process on every login).
#   - mod_stream_mgmt (XEP-0198) is on, as in ejabberd's default config: the client
#     measures send → server ack (`<a h=…/>`) with it.
#
# Environment (defaults): EJABBERD_PORT=5232 DIST_PORT=5233 PG_PORT=5442 USERS=2000
# PREFIX=u PASSWORD=bench. Needs root and `apt-get install ejabberd erlang-p1-pgsql
# postgresql`; the Debian services are not used (and should not be running).

set -Eeuo pipefail

EJABBERD_PORT=${EJABBERD_PORT:-5232}
DIST_PORT=${DIST_PORT:-5233}
PG_PORT=${PG_PORT:-5442}
USERS=${USERS:-2000}
PREFIX=${PREFIX:-u}
PASSWORD=${PASSWORD:-bench}
NODE=ejabberd-bench@localhost
PG_BIN=/usr/lib/postgresql/15/bin
PG_SCHEMA=/usr/share/ejabberd/sql/pg.sql

usage() {
    echo "usage: $0 start <nomam|mam-pg> <dir> | $0 stop <dir>" >&2
    exit 2
}

# ejabberdctl against this instance only (its own config dir, spool, logs and node), as
# the `ejabberd` user. Called as root, ejabberdctl would switch users with `su`, whose PAM
# session drops the open-files limit to 1024: too few for thousands of sessions. setpriv
# keeps this shell's limits.
ctl() {
    local dir=$1
    shift
    ulimit -n "$(ulimit -Hn)"
    HOME=$dir/spool setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
        ejabberdctl --config-dir "$dir" --ctl-config "$dir/ejabberdctl.cfg" \
        --config "$dir/ejabberd.yml" --spool "$dir/spool" --logs "$dir/logs" "$@"
}

port_free() {
    ! ss -Htln "sport = :$1" | grep -q .
}

write_config() {
    local mode=$1 dir=$2
    cat >"$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=$NODE
ERL_DIST_PORT=$DIST_PORT
INET_DIST_INTERFACE=127.0.0.1
ERL_OPTIONS="-setcookie natter-bench -env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH=$dir/spool/ejabberd.pid
EOF
    cp /etc/ejabberd/inetrc "$dir/inetrc"
    cat >"$dir/ejabberd.yml" <<EOF
hosts: [localhost]
loglevel: warning
log_rotate_count: 0
certfiles: []
listen:
  - port: $EJABBERD_PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    backlog: 1024
    starttls: false
    starttls_required: false
    max_stanza_size: 262144
auth_method: [internal]
auth_password_format: plain
auth_cache_size: 100000
s2s_access: none
EOF
    if [ "$mode" = mam-pg ]; then
        cat >>"$dir/ejabberd.yml" <<EOF
sql_type: pgsql
sql_server: 127.0.0.1
sql_port: $PG_PORT
sql_database: ejabberd
sql_username: ejabberd
sql_password: ejabberd
EOF
    fi
    cat >>"$dir/ejabberd.yml" <<EOF
modules:
  mod_disco: {}
  mod_roster: {}
  mod_offline: {}
  mod_stream_mgmt: {}
EOF
    if [ "$mode" = mam-pg ]; then
        cat >>"$dir/ejabberd.yml" <<EOF
  mod_mam:
    db_type: sql
    default: always
EOF
    fi
}

start_postgres() {
    local dir=$1
    install -d -o postgres -g postgres -m 700 "$dir/pg"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/pg" -U ejabberd -A trust \
        --no-sync >"$dir/pg-initdb.log"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/pg" -l "$dir/pg/postgres.log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$dir/pg" \
        start >/dev/null
    head -1 "$dir/pg/postmaster.pid" >"$dir/postgres.pid"
    runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U ejabberd ejabberd
    runuser -u postgres -- "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U ejabberd \
        -d ejabberd -v ON_ERROR_STOP=1 -f "$PG_SCHEMA" >/dev/null
}

write_users() {
    local file=$1 i
    {
        echo "<?xml version='1.0' encoding='UTF-8'?>"
        echo "<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'>"
        for ((i = 0; i < USERS; i++)); do
            echo "<user name='$PREFIX$i' password='$PASSWORD'/>"
        done
        echo "</host></server-data>"
    } >"$file"
}

start() {
    local mode=$1 dir=$2 port
    case $mode in nomam | mam-pg) ;; *) usage ;; esac
    [ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
    "$(dirname "$0")/../../scripts/need.sh" ejabberdctl:ejabberd \
        /usr/lib/erlang/lib/p1_pgsql-1.1.20/ebin/p1_pgsql.app:erlang-p1-pgsql \
        /usr/lib/postgresql/15/bin/initdb:postgresql
    [ ! -e "$dir/ejabberd.pid" ] || { echo "$dir already has an instance" >&2; exit 1; }
    for port in "$EJABBERD_PORT" "$DIST_PORT" $([ "$mode" = mam-pg ] && echo "$PG_PORT"); do
        port_free "$port" || { echo "port $port is taken" >&2; exit 1; }
    done
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    trap 'echo "start failed; clean up with: $0 stop $dir" >&2' ERR
    chmod 755 "$dir"
    write_config "$mode" "$dir"
    install -d -o ejabberd -g ejabberd "$dir/spool" "$dir/logs"
    [ "$mode" = mam-pg ] && start_postgres "$dir"

    ctl "$dir" start
    ctl "$dir" started
    cp "$dir/spool/ejabberd.pid" "$dir/ejabberd.pid"
    write_users "$dir/users.xml"
    chmod 644 "$dir/users.xml"
    ctl "$dir" import_piefxis "$dir/users.xml"
    echo "ejabberd ($mode) on 127.0.0.1:$EJABBERD_PORT, domain localhost, beam.smp pid $(cat "$dir/ejabberd.pid")"
    echo "users ${PREFIX}0..$PREFIX$((USERS - 1)) @localhost, password '$PASSWORD'"
    if [ "$mode" = mam-pg ]; then
        echo "archive: PostgreSQL 127.0.0.1:$PG_PORT db ejabberd user ejabberd, pid $(cat "$dir/postgres.pid")"
    fi
    cat <<EOF
run:  natter-bench xmpp --server 127.0.0.1:$EJABBERD_PORT --password $PASSWORD --users-prefix $PREFIX --system ejabberd-$mode
stop: $0 stop $dir
EOF
}

# Waits up to $2 seconds for process $1 to exit; true if it did.
wait_gone() {
    local pid=$1 i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

stop() {
    local dir=$1 file pid
    # The VM writes spool/ejabberd.pid as it starts; `start` copies it once ejabberd is up.
    for file in "$dir/ejabberd.pid" "$dir/spool/ejabberd.pid"; do
        [ -f "$file" ] && break
    done
    if [ -f "$file" ]; then
        pid=$(cat "$file")
        ctl "$dir" stop >/dev/null 2>&1 || true
        wait_gone "$pid" 30 || { kill "$pid" 2>/dev/null || true; wait_gone "$pid" 10 || kill -9 "$pid" 2>/dev/null || true; }
        rm -f "$dir/ejabberd.pid" "$dir/spool/ejabberd.pid"
        echo "ejabberd (pid $pid) stopped"
    fi
    if [ -f "$dir/postgres.pid" ]; then
        pid=$(cat "$dir/postgres.pid")
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1 ||
            kill "$pid" 2>/dev/null || true
        wait_gone "$pid" 30 || true
        rm -f "$dir/postgres.pid"
        echo "postgres (pid $pid) stopped"
    fi
}

case ${1:-} in
start) [ $# -eq 3 ] || usage; start "$2" "$3" ;;
stop) [ $# -eq 2 ] || usage; stop "$2" ;;
*) usage ;;
esac
