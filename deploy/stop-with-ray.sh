#!/usr/bin/env bash
# Ends the selector when the head's Ray ends, so that `ray down` (which runs `ray stop` on
# the head) and a plain `ray stop` stop `dynams serve` too: a Ray driver does not exit by
# itself when its cluster is gone. The head's start commands run it beside the selector:
#
#   stop-with-ray.sh SELECTOR_PID GCS_HOST:PORT [INTERVAL_S=10] [MISSES=3]
#
# Every INTERVAL_S seconds it opens a TCP connection to Ray's GCS port; after MISSES failed
# attempts in a row it sends the selector SIGTERM (a clean stop: its scorers are killed,
# its state is already on disk) and exits. It exits at once when the selector exits first.
# Needs only bash and coreutils (`timeout`, `sleep`).
set -u
if [ $# -lt 2 ]; then
  echo "usage: $0 SELECTOR_PID GCS_HOST:PORT [INTERVAL_S] [MISSES]" >&2
  exit 2
fi
pid=$1
host=${2%:*}
port=${2##*:}
interval=${3:-10}
misses=${4:-3}
failed=0
while kill -0 "$pid" 2> /dev/null; do
  if timeout 5 bash -c 'exec 3<> "/dev/tcp/$0/$1"' "$host" "$port" 2> /dev/null; then
    failed=0
  else
    failed=$((failed + 1))
    if [ "$failed" -ge "$misses" ]; then
      echo "$(date -Is) Ray's GCS at $host:$port is gone: stopping the selector (pid $pid)"
      kill -TERM "$pid" 2> /dev/null
      exit 0
    fi
  fi
  sleep "$interval"
done
