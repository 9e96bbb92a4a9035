#!/bin/sh
# Redis for the compose stack: one ACL user per service, and no password on any command line.
#
#   sh start.sh redis-server [options...]
#
# Writes the users file (REDIS_ACL_FILE, default /tmp/redis-users.acl, mode 600) from the
# passwords in the environment, stored as SHA-256 hashes, takes the passwords out of the
# environment, then starts the given command with `--aclfile` (through the image's
# docker-entrypoint.sh when there is one, which drops root for the redis user). The passwords
# reach sha256sum on its standard input only (printf is a shell builtin).
#
#   default   REDIS_PASSWORD: administration (docker compose exec redis redis-cli) and the
#             healthcheck; no service connects as it.
#   worker, beat, flower   their own passwords; every command but the administrative and
#             dangerous ones (CONFIG, SHUTDOWN, FLUSHALL, KEYS, DEBUG, ACL, MONITOR, ...). Celery
#             needs them to send, take and acknowledge tasks, results and events, and to send
#             control messages (Flower's revoke and shutdown are its job).
#   exporter  read-only: the lengths of the `celery`, `monitoring` and `training` queues (EXISTS, LLEN, in MULTI) and a
#             subscription to the workers' heartbeats (PSUBSCRIBE on broker database 0's
#             worker-events topic). It can neither send a task nor a control message.
set -eu

: "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
: "${REDIS_WORKER_PASSWORD:?set REDIS_WORKER_PASSWORD in .env}"
: "${REDIS_BEAT_PASSWORD:?set REDIS_BEAT_PASSWORD in .env}"
: "${REDIS_FLOWER_PASSWORD:?set REDIS_FLOWER_PASSWORD in .env}"
: "${REDIS_EXPORTER_PASSWORD:?set REDIS_EXPORTER_PASSWORD in .env}"
acl=${REDIS_ACL_FILE:-/tmp/redis-users.acl}

sha() { printf '%s' "$1" | sha256sum | cut -d ' ' -f 1; }
app='~* &* +@all -@admin -@dangerous'
exporter='resetkeys %R~celery* %R~monitoring* %R~training* resetchannels &/0.celeryev/worker.* -@all +auth +hello +ping +multi +exec +discard +exists +llen +psubscribe +punsubscribe'

umask 077
{
  printf 'user default on #%s ~* &* +@all\n' "$(sha "$REDIS_PASSWORD")"
  printf 'user worker on #%s %s\n' "$(sha "$REDIS_WORKER_PASSWORD")" "$app"
  printf 'user beat on #%s %s\n' "$(sha "$REDIS_BEAT_PASSWORD")" "$app"
  printf 'user flower on #%s %s\n' "$(sha "$REDIS_FLOWER_PASSWORD")" "$app"
  printf 'user exporter on #%s %s\n' "$(sha "$REDIS_EXPORTER_PASSWORD")" "$exporter"
} > "$acl"
if [ "$(id -u)" = 0 ] && id redis > /dev/null 2>&1; then
  chown redis "$acl"  # the image's entrypoint runs the server as `redis`
fi
unset REDIS_PASSWORD REDIS_WORKER_PASSWORD REDIS_BEAT_PASSWORD REDIS_FLOWER_PASSWORD REDIS_EXPORTER_PASSWORD

if command -v docker-entrypoint.sh > /dev/null 2>&1; then
  set -- docker-entrypoint.sh "$@"
fi
exec "$@" --aclfile "$acl"
