#!/usr/bin/env bash
# The benchmark suite: imreport beside PostgreSQL 15 and DuckDB on the same generated data.
#   bench/run.sh                 # 1M messages, then writes BENCHMARKS.md
#   bench/run.sh 1000000 10000000
#   bench/run.sh --scale [MESSAGES [DAYS [BASE]]]   # imreport alone at 100M over 60 days
#                                                   # against 10M over 7 (issue 25)
#   BENCH_SMOKE=1 bench/run.sh   # seconds-long smoke run (CI): no figures judged, nothing written
# Needs: cargo, python3 (installs duckdb and psycopg from PyPI into bench/.venv), PostgreSQL
# reachable at 127.0.0.1:5432 (started with pg_ctlcluster when it is down).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000000)
if [ "${BENCH_SMOKE:-}" = 1 ]; then
  # The smoke run checks the suite's plumbing, not speed: the debug binary the tests built
  # will do, which spares CI a release build.
  SIZES=(10000)
  cargo build --quiet --bin imreport
  export IMREPORT_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/imreport"
else
  cargo build --release --quiet --bin imreport
fi
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/pip install --quiet -r bench/requirements.txt
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
exec bench/.venv/bin/python bench/bench.py "${SIZES[@]}"
