#!/usr/bin/env bash
# Copy the head's SQLite MLflow backend to S3 (consistent snapshot through SQLite's backup API). Run it on the
# head before `ray down` when MLflow uses SQLite:
#   ray exec cluster/aws.yaml 'bash /home/ray/nas-cluster/backup-mlflow-db.sh s3://BUCKET/mlflow-db/'
set -euo pipefail
dest=${1:?s3://bucket/prefix/}
python - ~/mlflow/mlflow.db "$dest" <<'PY'
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import boto3

src, dest = sys.argv[1], sys.argv[2]
bucket, _, prefix = dest[len("s3://"):].partition("/")
with tempfile.TemporaryDirectory() as tmp:
    snap = Path(tmp) / "mlflow.db"
    with sqlite3.connect(src) as a, sqlite3.connect(snap) as b:
        a.backup(b)
    key = f"{prefix.rstrip('/')}/mlflow-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.db".lstrip("/")
    boto3.client("s3").upload_file(str(snap), bucket, key)
    print(f"s3://{bucket}/{key}")
PY
