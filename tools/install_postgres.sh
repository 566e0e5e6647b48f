#!/usr/bin/env bash
# PostgreSQL for the team's tracking server (tools/team.py, make team-up) and its tests
# (tests/test_team.py), from Debian. A no-op when initdb and pg_ctl are present; needs root (or
# sudo) to install them.
set -euo pipefail
if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
  exit 0
fi
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL missing: run 'sudo make postgres' (apt-get install postgresql)" >&2
  echo "until then make team-up and tests/test_team.py fail" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# tools/team.py runs its own cluster in .team/: keep the package from creating (and starting) a
# "main" cluster on port 5432 that nobody uses
mkdir -p /etc/postgresql-common/createcluster.d
if [ ! -e /etc/postgresql-common/createcluster.d/ser.conf ]; then
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/ser.conf
fi
apt-get update -q
apt-get install -y -q postgresql
