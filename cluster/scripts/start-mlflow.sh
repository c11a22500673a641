#!/usr/bin/env bash
# (Re)start the cluster's MLflow tracking server on the head node (cluster/aws.yaml, head_start_ray_commands).
#
#   start-mlflow.sh ARTIFACTS_DESTINATION [SSM_BACKEND_PARAMETER] [SSM_PASSWORD_PARAMETER]
#
# Binds to the head's private IP, port 5000: reachable by every node of the cluster (the security group admits
# traffic between cluster nodes only) and by operators through an SSH tunnel; never public.
# MLFLOW_HOST, MLFLOW_PORT and MLFLOW_WORKERS (default 2) override address, port and server processes.
# Authentication: MLflow's basic-auth app. Its admin user `nas` gets the password in the SSM SecureString parameter
# SSM_PASSWORD_PARAMETER (default /nas-proxyless/mlflow-password; node-env.sh gives every node the same credentials
# in ~/.mlflow/credentials). Without that parameter the server does not start: it never serves unauthenticated.
# Backend store: the PostgreSQL URI in the SSM SecureString parameter if it exists (e.g. an RDS instance; the
# password lives only in SSM), else SQLite under ~/mlflow (lost with the head node: back it up before `ray down`
# with backup-mlflow-db.sh).
# Secrets reach the server through its environment (MLFLOW_BACKEND_STORE_URI, MLFLOW_AUTH_ADMIN_PASSWORD) and files
# of mode 600 under ~/mlflow, never its command line, where any process could read them in /proc.
# Artifacts: ARTIFACTS_DESTINATION (s3://bucket/prefix), written by the server through the instance profile.
set -euo pipefail
artifacts=${1:?artifacts destination, e.g. s3://bucket/mlflow}
param=${2:-/nas-proxyless/mlflow-backend-uri}
password_param=${3:-/nas-proxyless/mlflow-password}
region=${AWS_DEFAULT_REGION:?run node-env.sh first}
port=${MLFLOW_PORT:-5000}
# The head's private IP (the address Ray itself picks: the interface that routes outward; no packet is sent).
host=${MLFLOW_HOST:-$(python -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("10.255.255.255", 1)); print(s.getsockname()[0])')}
state=~/mlflow
mkdir -p "$state" && chmod 700 "$state"
umask 077

ssm_get() {  # the decrypted value of an SSM parameter on stdout, nothing if it does not exist
  python - "$region" "$1" <<'PY' || true
import sys

import boto3

try:
    value = boto3.client("ssm", region_name=sys.argv[1]).get_parameter(Name=sys.argv[2], WithDecryption=True)
    print(value["Parameter"]["Value"].strip())
except Exception:  # no such parameter
    pass
PY
}

MLFLOW_AUTH_ADMIN_PASSWORD=$(ssm_get "$password_param")
if [[ -z $MLFLOW_AUTH_ADMIN_PASSWORD ]]; then
  echo "no MLflow password in SSM $password_param: MLflow does not serve without authentication (see the README)" >&2
  exit 1
fi
# The CSRF secret of MLflow's auth app: one random value for this head, kept across restarts.
[[ -s $state/flask-secret ]] || python -c 'import secrets; print(secrets.token_hex(32))' > "$state/flask-secret"
MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$state/flask-secret")
cat > "$state/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$state/basic_auth.db
admin_username = nas
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_CONFIG_PATH=$state/basic_auth.ini

backend=$(ssm_get "$param")
export MLFLOW_BACKEND_STORE_URI=${backend:-sqlite:///$state/mlflow.db}

if [[ -f $state/server.pid ]] && kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
  kill -TERM -- "-$(cat "$state/server.pid")" 2>/dev/null || kill -TERM "$(cat "$state/server.pid")" || true
  sleep 3
fi
# setsid: its own process group, so the line above stops exactly this server and its workers next time.
# The pid file holds the session leader's pid (= its process group id), written by the process itself.
setsid bash -c 'echo $$ > "$0/server.pid"; exec "${@}"' "$state" \
  mlflow server --app-name basic-auth --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-2}" >"$state/server.log" 2>&1 < /dev/null &

for _ in $(seq 1 60); do
  if python -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://$host:$port/health" 2>/dev/null; then
    echo "MLflow at http://$host:$port (basic auth, user nas; backend: ${MLFLOW_BACKEND_STORE_URI%%:*}, artifacts: $artifacts)"
    exit 0
  fi
  sleep 2
done
echo "MLflow did not come up; see $state/server.log" >&2
tail -n 50 "$state/server.log" >&2
exit 1
