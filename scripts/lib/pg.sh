# Throwaway PostgreSQL cluster helpers for scripts/demo and scripts/bench (sourced).
# PostgreSQL refuses to run as root: as root, server commands run as the `postgres` user.

pg_bin_dir() {
  local d
  for d in "${DISPATCHBOX_TEST_PG_BIN:-}" /usr/lib/postgresql/17/bin /usr/lib/postgresql/16/bin /usr/lib/postgresql/15/bin; do
    [ -n "$d" ] && [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
  echo "PostgreSQL server binaries not found; run scripts/install-test-deps" >&2
  return 1
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pg_start DIR PORT: initdb + start with wal_level=logical; password "postgres" for user postgres.
pg_start() {
  local dir=$1 port=$2 bin
  bin=$(pg_bin_dir)
  mkdir -p "$dir"
  echo postgres > "$dir/pwfile"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 -N --pwfile "$dir/pwfile" >"$dir/initdb.log" 2>&1
  cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_slot_wal_keep_size = '4GB'
fsync = off
synchronous_commit = off
CONF
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

pg_stop() {
  local dir=$1 bin
  bin=$(pg_bin_dir) || return 0
  [ -d "$dir/data" ] && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}
