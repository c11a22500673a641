#!/usr/bin/env bash
# (Re)start the cluster's MLflow tracking server on the head node (cluster/aws.yaml, head_start_ray_commands).
#
#   start-mlflow.sh ARTIFACTS_DESTINATION [SSM_BACKEND_PARAMETER]
#
# Binds to the head's private IP, port 5000: reachable by every node of the cluster (the security group admits
# traffic between cluster nodes only) and by operators through an SSH tunnel; never public.
# MLFLOW_HOST, MLFLOW_PORT and MLFLOW_WORKERS (default 2) override address, port and server processes.
# Backend store: the PostgreSQL URI in the SSM SecureString parameter if it exists (e.g. an RDS instance; the
# password lives only in SSM; needs psycopg2 in the image, not yet a project dependency), else SQLite under
# ~/mlflow (lost with the head node: back it up before `ray down` with backup-mlflow-db.sh).
# Artifacts: ARTIFACTS_DESTINATION (s3://bucket/prefix), written by the server through the instance profile.
set -euo pipefail
artifacts=${1:?artifacts destination, e.g. s3://bucket/mlflow}
param=${2:-/nas-proxyless/mlflow-backend-uri}
region=${AWS_DEFAULT_REGION:?run node-env.sh first}
port=${MLFLOW_PORT:-5000}
# The head's private IP (the address Ray itself picks: the interface that routes outward; no packet is sent).
host=${MLFLOW_HOST:-$(python -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("10.255.255.255", 1)); print(s.getsockname()[0])')}
state=~/mlflow
mkdir -p "$state"

backend=$(python - "$region" "$param" <<'PY' || true
import sys

import boto3

try:
    value = boto3.client("ssm", region_name=sys.argv[1]).get_parameter(Name=sys.argv[2], WithDecryption=True)
    print(value["Parameter"]["Value"].strip())
except Exception:  # no such parameter: SQLite
    pass
PY
)
backend=${backend:-sqlite:///$state/mlflow.db}

if [[ -f $state/server.pid ]] && kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
  kill -TERM -- "-$(cat "$state/server.pid")" 2>/dev/null || kill -TERM "$(cat "$state/server.pid")" || true
  sleep 3
fi
# setsid: its own process group, so the line above stops exactly this server and its workers next time.
# The pid file holds the session leader's pid (= its process group id), written by the process itself.
setsid bash -c 'echo $$ > "$0/server.pid"; exec "${@}"' "$state" \
  mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-2}" >"$state/server.log" 2>&1 < /dev/null &

for _ in $(seq 1 60); do
  if python -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://$host:$port/health" 2>/dev/null; then
    echo "MLflow at http://$host:$port (backend: ${backend%%:*}, artifacts: $artifacts)"
    exit 0
  fi
  sleep 2
done
echo "MLflow did not come up; see $state/server.log" >&2
tail -n 50 "$state/server.log" >&2
exit 1
