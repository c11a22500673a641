# Image for the ProxylessNAS search on a Ray cluster (cluster launcher: cluster/aws.yaml; KubeRay: cluster/kuberay/).
#
# Base: the official Ray image, pinned by its exact version tag to pyproject.toml's Ray and to Python 3.11 (which
# pyproject admits), GPU (CUDA) variant. To pin the exact bytes, add the tag's digest (README, operator guide,
# step 1): FROM rayproject/ray:2.60.0-py311-gpu@sha256:<digest>.
# (The rayproject/ray-ml images are no longer published.) It already runs as the non-root user `ray`
# (uid 1000, gid 100) with its Python environment owned by that user.
#
# Build and push (README, operator guide):
#   docker build -t nas-proxyless:0.1.0-ray2.60.0-py311-gpu .
# No secrets are baked in: S3 access comes from the node's IAM instance profile (EC2) or IRSA (EKS) at run time,
# the Ray auth token from SSM / a Kubernetes Secret.
FROM rayproject/ray:2.60.0-py311-gpu

# Non-root, as in the base image: the install below and every process of the container run as `ray`.
USER ray
WORKDIR /home/ray/app

# The same install step as the Makefile: the project and its pinned dependencies from pyproject.toml, with the
# deployment runtimes a node measures latency tables in (`nas latency build --runtime openvino|litert`).
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 orchestrator ./orchestrator
RUN python -m pip install --no-cache-dir '.[runtimes]' \
 && python -c "import ray, torch, mlflow, orchestrator; assert ray.__version__ == '2.60.0', ray.__version__"

# Entry points that jobs run (`ray job submit --working-dir .` overrides them with the submitter's checkout).
COPY --chown=1000:100 workloads ./workloads
COPY --chown=1000:100 configs ./configs

ENV PYTHONUNBUFFERED=1
