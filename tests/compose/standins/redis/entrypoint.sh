#!/bin/sh
# redis:7's documented start-up, for the Debian-built stand-in: options alone mean redis-server;
# as root, take ownership of /data and drop to the redis user; protected mode off unless asked.
set -e
case "$1" in
  -*|*.conf) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
  if [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
  fi
  umask 0077
fi
exec "$@"
