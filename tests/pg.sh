#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests and benchmarks: made in a directory of the
# caller's, served on 127.0.0.1 and on a Unix socket in that directory, and stopped when asked
# or when the process it watches ends (so a killed test run leaves no server behind).
#
#   tests/pg.sh start DIR [PID]   make and start a cluster in DIR (empty or missing); print its
#                                 superuser URL on stdout and write DIR/env (PG_URL, PG_PORT,
#                                 PG_SOCKET, PG_PASSWORD, PG_CA: the CA that signed the
#                                 server's TLS certificate). With PID, stop it and remove DIR
#                                 once PID has exited.
#   tests/pg.sh stop DIR          stop the cluster in DIR now.
#
# The superuser is `idem` with a password (TCP connections must give it, so the tests can
# check that passwords never reach an output); connections on the socket are trusted. The
# server runs as the calling user, or as `postgres` when called as root (PostgreSQL refuses
# to run as root). It fails, saying why, if the server cannot start: it never skips.
set -euo pipefail

die() {
  echo "tests/pg.sh: $*" >&2
  exit 1
}

bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && echo "$d"
  done | sort -V | tail -1
}

as_owner() {
  if ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: tests/pg.sh start DIR [PID] | stop DIR"
bin=$(bindir)
[ -n "$bin" ] || die "no PostgreSQL server found under /usr/lib/postgresql; run tests/setup.sh"

case $cmd in
stop)
  [ -d "$dir/data" ] || exit 0
  as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  ;;
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || die "running as root needs the postgres user; run tests/setup.sh"
    chown postgres: "$dir"
    # The directories above must let the server reach its own.
    p=$dir
    while p=$(dirname "$p") && [ "$p" != / ]; do
      chmod o+x "$p" 2>/dev/null || true
    done
  fi
  password="idem-pg-$RANDOM$RANDOM-secret"
  pwfile="$dir/pw"
  printf '%s\n' "$password" >"$pwfile"
  ((EUID == 0)) && chown postgres: "$pwfile"
  as_owner "$bin/initdb" -D "$dir/data" -U idem --pwfile="$pwfile" -A scram-sha-256 \
    --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    die "initdb failed:
$(cat "$dir/initdb.log")"
  rm -f "$pwfile"
  # TLS on TCP (the server takes plain connections too): a CA made for this cluster, and a
  # server certificate it signed for localhost and 127.0.0.1, so tests can check sslmode
  # require, verify-ca and verify-full against a CA of their own (DIR/ca.crt).
  command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=idem test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" >"$dir/tls.log" 2>&1 || die "making the test CA failed: $(cat "$dir/tls.log")"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/data/server.key" -out "$dir/server.csr" >>"$dir/tls.log" 2>&1 || die "making the server key failed"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3 -extfile "$dir/server.ext" -out "$dir/data/server.crt" >>"$dir/tls.log" 2>&1 ||
    die "signing the server certificate failed: $(cat "$dir/tls.log")"
  chmod 600 "$dir/data/server.key"
  ((EUID == 0)) && chown postgres: "$dir/data/server.key" "$dir/data/server.crt"
  chmod 644 "$dir/ca.crt"
  started=
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 30000))
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c shared_buffers=128MB -c ssl=on" \
      start >/dev/null 2>&1; then
      started=1
      break
    fi
  done
  [ -n "$started" ] || die "the server did not start:
$(tail -20 "$dir/server.log" 2>/dev/null)"
  url="postgresql://idem:$password@127.0.0.1:$port/postgres"
  {
    echo "PG_URL=$url"
    echo "PG_PORT=$port"
    echo "PG_SOCKET=$dir"
    echo "PG_PASSWORD=$password"
    echo "PG_CA=$dir/ca.crt"
  } >"$dir/env"
  if [ -n "${3:-}" ]; then
    watched=$3
    script=$(printf 'while kill -0 %s 2>/dev/null; do sleep 1; done; %q stop %q; rm -rf %q' \
      "$watched" "$self" "$dir" "$dir")
    setsid bash -c "$script" </dev/null >/dev/null 2>&1 &
  fi
  echo "$url"
  ;;
*)
  die "unknown command $cmd"
  ;;
esac
