#!/usr/bin/env bash
# `make executor-dev`: the Dagster UI (webserver + daemon) with every step in a ks-platform:cpu container on the local
# Docker engine, runs and events in a local PostgreSQL cluster. Ctrl-C stops dagster and the database.
#   - PostgreSQL: a cluster under $KS_DEV_DATA/pgdata (Debian's postgresql binaries; as user postgres when root),
#     listening on 127.0.0.1:$KS_DEV_PGPORT; the containers reach it with network_mode: host
#   - DAGSTER_HOME=$KS_DEV_DATA/dagster_home with deploy/dagster.postgres.yaml
#   - KS_PLATFORM_DEPLOYMENT=$KS_DEV_DATA/deployment.yaml: engine docker, one local cpu host, store and landing roots
# Settings (environment): KS_DEV_DATA (data/executor-dev), KS_DEV_PORT (3000), KS_DEV_PGPORT (55432), KS_DEV_IMAGE
# (ks-platform:cpu), KS_PLATFORM_STORE, KS_PLATFORM_LANDING (name=path,...).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
data=$(realpath -m "${KS_DEV_DATA:-data/executor-dev}")
port=${KS_DEV_PORT:-3000}
pgport=${KS_DEV_PGPORT:-55432}
image=${KS_DEV_IMAGE:-ks-platform:cpu}
store=$(realpath -m "${KS_PLATFORM_STORE:-data/store}")
landing=${KS_PLATFORM_LANDING:-rig1=$repo/data/landing/rig1}
dagster=$repo/.venv/bin/dagster
[[ -x $dagster ]] || { echo "no $dagster. Fix: make install" >&2; exit 1; }
docker image inspect "$image" >/dev/null 2>&1 || { echo "image $image is missing on the local Docker engine. Fix: bash docker/build_images.sh cpu" >&2; exit 1; }

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -n $bin && -x $bin/initdb ]] || { echo "PostgreSQL server binaries not found. Fix: bash scripts/install_system_deps.sh" >&2; exit 1; }
pguser=$(id -un)
as_pg=()
if [[ $(id -u) -eq 0 ]]; then pguser=postgres; as_pg=(runuser -u postgres --); fi
mkdir -p "$data/pgsock" "$data/dagster_home" "$store"
if [[ $(id -u) -eq 0 ]]; then
  chown "$pguser" "$data" "$data/pgsock"
  runuser -u postgres -- test -x "$data" || { echo "user postgres cannot enter $data. Fix: chmod o+x its parent folders or set KS_DEV_DATA to a folder it can reach" >&2; exit 1; }
fi
if [[ ! -s $data/pgdata/PG_VERSION ]]; then
  "${as_pg[@]}" "$bin/initdb" -D "$data/pgdata" -U "$pguser" --auth=trust -E UTF8 >"$data/initdb.log"
fi
"${as_pg[@]}" "$bin/pg_ctl" -D "$data/pgdata" -l "$data/postgres.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $pgport -k $data/pgsock" start >/dev/null
stop_db() { "${as_pg[@]}" "$bin/pg_ctl" -D "$data/pgdata" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop_db EXIT
"${as_pg[@]}" "$bin/psql" -h 127.0.0.1 -p "$pgport" -U "$pguser" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='dagster'" | grep -q 1 \
  || "${as_pg[@]}" "$bin/createdb" -h 127.0.0.1 -p "$pgport" -U "$pguser" dagster

export DAGSTER_HOME=$data/dagster_home DAGSTER_PG_USERNAME=$pguser DAGSTER_PG_PASSWORD="" DAGSTER_PG_HOST=127.0.0.1 \
  DAGSTER_PG_DB=dagster DAGSTER_PG_PORT=$pgport KS_PLATFORM_STORE=$store KS_PLATFORM_LANDING=$landing
cp deploy/dagster.postgres.yaml "$DAGSTER_HOME/dagster.yaml"

# The step containers run as the image's user (uid 1000) and write the store.
owner=$(docker image inspect "$image" --format '{{.Config.User}}'); owner=${owner:-0}
if [[ $(id -u) -eq 0 && $owner != 0* && $(stat -c %u "$store") != "${owner%%:*}" ]]; then
  echo "chown -R $owner $store (step containers of $image write it as $owner)"
  chown -R "$owner" "$store"
fi
{
  echo "# written by scripts/executor_dev.sh (docs/deployment.md)"
  echo "engine: docker"
  echo "inventory:"
  echo "  store: $store"
  echo "  landing:"
  IFS=, read -ra roots <<<"$landing"
  for root in "${roots[@]}"; do mkdir -p "${root#*=}"; echo "    ${root%%=*}: $(realpath "${root#*=}")"; done
  echo "  hosts:"
  echo "    - {name: local, docker_url: unix:///var/run/docker.sock, backend: cpu, cpu_slots: 2, images: {cpu: $image}, network_mode: host}"
} >"$data/deployment.yaml"
export KS_PLATFORM_DEPLOYMENT=$data/deployment.yaml
echo "executor-dev: PostgreSQL 127.0.0.1:$pgport, DAGSTER_HOME=$DAGSTER_HOME, KS_PLATFORM_DEPLOYMENT=$KS_PLATFORM_DEPLOYMENT"
echo "executor-dev: Dagster UI on http://127.0.0.1:$port (steps run in $image containers)"
# dagster dev in its own process group: Ctrl-C/SIGTERM reach it once through the trap, and whatever of it is still
# there 30 s later (its daemon can hang on shutdown) is killed, so the database is always stopped after it.
# SIGINT back to its default first (scripts/exec_with_sigint.py: a background job starts with it ignored).
setsid "$repo/.venv/bin/python" "$repo/scripts/exec_with_sigint.py" "$dagster" dev -w workspace.yaml -h 127.0.0.1 -p "$port" &
child=$!
stop_dagster() {
  kill -INT -- "-$child" 2>/dev/null || return 0
  for _ in $(seq 30); do kill -0 -- "-$child" 2>/dev/null || return 0; sleep 1; done
  echo "executor-dev: dagster dev still running 30 s after the interrupt: killing it" >&2
  kill -KILL -- "-$child" 2>/dev/null || true
}
trap 'stop_dagster; exit 130' INT TERM
wait "$child" || true
