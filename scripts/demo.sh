#!/usr/bin/env bash
# The main job on the embedded default (SQLite, checkpoint table): no servers needed.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build
export DATABASE_URL="sqlite:data/demo.sqlite"
unset REDIS_URL
rm -f data/demo.sqlite data/demo.sqlite-wal data/demo.sqlite-shm
cli() { echo "\$ ticket-tokens $*" >&2; node dist/main.js "$@"; }
cli migrate
cli seed users --count 1000
cli seed orders --count 10000
cli seed tickets --count ${DEMO_TICKETS:-200000}
cli regenerate --dry-run
cli regenerate
cli regenerate --resume
cli status
cli verify
