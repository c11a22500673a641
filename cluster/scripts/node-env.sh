#!/usr/bin/env bash
# Prepare a Ray node's shell environment (cluster/aws.yaml runs this in the container before `ray start`).
#
#   node-env.sh REGION MLFLOW_HOST [SSM_TOKEN_PARAMETER] [SSM_MLFLOW_PASSWORD_PARAMETER]
#
# - Reads the cluster's Ray auth token from an SSM SecureString parameter (through the node's IAM instance
#   profile; no keys anywhere) into ~/.ray/auth_token (mode 600), the path Ray reads by default.
# - Reads the MLflow password (user `nas`, start-mlflow.sh) from SSM into ~/.mlflow/credentials (mode 600), where
#   MLflow's client finds it: the tracking URI itself carries no credentials.
# - Appends RAY_AUTH_MODE=token, AWS_DEFAULT_REGION and MLFLOW_TRACKING_URI to ~/.bashrc. The cluster launcher
#   runs every command through an interactive bash, so `ray start`, `ray status`, `ray exec` and all Ray workers
#   (they inherit the raylet's environment) see the same settings. RAY_AUTH_MODE must match on every node.
# MLFLOW_HOST "self" means this node's private IP (the head, where MLflow runs).
set -euo pipefail
region=${1:?region}
mlflow_host=${2:?mlflow host or "self"}
param=${3:-/nas-proxyless/ray-auth-token}
mlflow_param=${4:-/nas-proxyless/mlflow-password}

if [[ $mlflow_host == self ]]; then
  # The address Ray itself picks: the interface that routes outward (no packet is sent).
  mlflow_host=$(python -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("10.255.255.255", 1)); print(s.getsockname()[0])')
fi

mkdir -p ~/.ray && chmod 700 ~/.ray
umask 077
ssm_get() {  # the decrypted value of an SSM parameter on stdout
  python - "$region" "$1" <<'PY'
import sys

import boto3

value = boto3.client("ssm", region_name=sys.argv[1]).get_parameter(Name=sys.argv[2], WithDecryption=True)
print(value["Parameter"]["Value"].strip(), end="")
PY
}
ssm_get "$param" > ~/.ray/auth_token.new
test -s ~/.ray/auth_token.new || { echo "empty Ray auth token from SSM $param" >&2; exit 1; }
mv ~/.ray/auth_token.new ~/.ray/auth_token

mkdir -p ~/.mlflow && chmod 700 ~/.mlflow
{ printf '[mlflow]\nmlflow_tracking_username = nas\nmlflow_tracking_password = '; ssm_get "$mlflow_param"; echo; } \
  > ~/.mlflow/credentials.new
grep -q 'password = .' ~/.mlflow/credentials.new || { echo "empty MLflow password from SSM $mlflow_param" >&2; exit 1; }
mv ~/.mlflow/credentials.new ~/.mlflow/credentials

marker="# nas-proxyless node env"
touch ~/.bashrc
sed -i "/$marker/d" ~/.bashrc
cat >> ~/.bashrc <<SH
export RAY_AUTH_MODE=token $marker
export AWS_DEFAULT_REGION=$region $marker
export MLFLOW_TRACKING_URI=http://$mlflow_host:5000 $marker
SH
echo "node env: RAY_AUTH_MODE=token, AWS_DEFAULT_REGION=$region, MLFLOW_TRACKING_URI=http://$mlflow_host:5000 (credentials in ~/.mlflow/credentials)"
