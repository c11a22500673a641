"""The cloud artefacts of issue 8 are consistent and safe: the image (Dockerfile), the Ray cluster-launcher config
(cluster/aws.yaml, against Ray's own schema), the KubeRay manifests, the node scripts, and the operator guide."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import stat
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes_validate as kv  # a dev dependency: make test installs it
import pytest
import yaml  # noqa: TID253
from packaging.specifiers import SpecifierSet

from tests.servers import _base_env, free_port, start_postgres

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
SCRIPTS = CLUSTER / "scripts"
GUIDE = ROOT / "README.md"  # the operator guide is a section of the README

PLACEHOLDER = re.compile(r"REPLACE_ME_[A-Z_]+")
KNOWN_PLACEHOLDERS = {"REPLACE_ME_ACCOUNT_ID", "REPLACE_ME_BUCKET", "REPLACE_ME_AMI"}
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"aws_(access_key_id|secret_access_key|session_token)\s*[:=]", re.I),
    re.compile(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)\s*[:=]"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}"),
]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pinned(name: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not buf and line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _base_tag() -> str:
    froms = [a for i, a in _dockerfile_instructions() if i == "FROM"]
    assert len(froms) == 1, froms
    image = froms[0].split()[0]
    assert image.startswith("rayproject/ray:"), image
    tag, _, digest = image.split(":", 1)[1].partition("@")  # an operator may pin the tag's digest too
    assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), digest
    return tag


def _expected_image_tag() -> str:
    """Our image's tag: <project version>-ray<base image tag>, e.g. 0.1.0-ray2.60.0-py311-gpu."""
    return f"{_pyproject()['project']['version']}-ray{_base_tag()}"


def _aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def _kube_docs() -> dict[str, list[dict]]:
    docs = {}
    for f in sorted(KUBERAY.glob("*.yaml")):
        docs[f.name] = [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def _images(obj) -> list[str]:
    """Every value of an ``image`` key anywhere in a manifest."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "image" and isinstance(v, str):
                found.append(v)
            else:
                found += _images(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _images(v)
    return found


def _walk(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def _cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file())


# ---- Dockerfile --------------------------------------------------------------------------------------------

def test_dockerfile_base_is_pinned_official_ray_gpu_image_matching_pyproject():
    tag = _base_tag()
    assert "3.11" in SpecifierSet(_pyproject()["project"]["requires-python"])  # the project admits the image's Python
    assert tag == f"{_pinned('ray')}-py311-gpu", tag
    assert "latest" not in tag and re.fullmatch(r"\d+\.\d+\.\d+-py\d+-gpu", tag), tag  # an exact version


def test_dockerfile_installs_project_like_the_makefile_as_non_root_without_secrets():
    ins = _dockerfile_instructions()
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert re.search(r"pip install (--no-cache-dir )?'?\.(\[runtimes\])?'?(\s|$)", runs), runs  # `pip install .`
    copies = " ".join(a for i, a in ins if i == "COPY")
    assert "pyproject.toml" in copies and "orchestrator" in copies
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for i, a in ins:
        if i in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", a) or [a.split()[0]]
            for n in names:
                assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", n, re.I), f"{i} {a}"
    text = (ROOT / "Dockerfile").read_text()
    assert not any(p.search(text) for p in SECRET_PATTERNS)


def test_dockerignore_keeps_local_state_and_credentials_out_of_the_build():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for must in (".git", ".venv", "**/.env", "**/*.pem", "**/.aws", "mlflow.db", "mlruns"):
        assert must in ignored, must
    for needed in ("pyproject.toml", "README.md", "orchestrator", "workloads", "configs"):
        assert needed not in ignored, needed


# ---- cluster/aws.yaml --------------------------------------------------------------------------------------

def test_aws_config_passes_rays_own_schema_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _aws()
    validate_config(copy.deepcopy(cfg))  # the raw file, against ray/autoscaler/ray-schema.json
    merged = prepare_config(copy.deepcopy(cfg))  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(merged)
    assert merged["setup_commands"] == []  # Ray's default setup (pip install a nightly wheel) must not run
    assert merged["available_node_types"][merged["head_node_type"]]["max_workers"] == 0


def test_aws_node_types_cpu_head_and_gpu_spot_and_on_demand_with_limits():
    cfg = _aws()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert not head["resources"].get("GPU") and head["resources"].get("CPU") == 0
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"])
    spot = [t for t in types.values() if t["resources"].get("GPU")
            and t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    ondemand = [t for t in types.values() if t["resources"].get("GPU")
                and "InstanceMarketOptions" not in t["node_config"]]
    assert spot and ondemand
    for name, t in types.items():
        if t is head:
            continue
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"], name
    assert cfg["max_workers"] <= sum(t["max_workers"] for t in types.values() if t is not head)
    assert 0 < cfg["idle_timeout_minutes"] <= 60
    assert cfg["provider"]["type"] == "aws" and cfg["provider"].get("cache_stopped_nodes") is False


def test_aws_uses_the_project_image_and_instance_profiles_not_keys():
    cfg = _aws()
    image = cfg["docker"]["image"]
    assert image.rsplit(":", 1)[1] == _expected_image_tag()
    assert "/nas-proxyless:" in image
    for name, t in cfg["available_node_types"].items():
        prof = t["node_config"].get("IamInstanceProfile", {})
        assert prof.get("Arn", "").startswith("arn:aws:iam::") or prof.get("Name"), name
        assert "docker" not in t or "worker_image" not in t["docker"]  # one image for every node
    text = (CLUSTER / "aws.yaml").read_text()
    assert not any(p.search(text) for p in SECRET_PATTERNS)
    region = cfg["provider"]["region"]
    assert set(re.findall(r"\b[a-z]{2}-[a-z]+-\d\b", text)) == {region}  # one region throughout


def test_aws_dashboard_and_mlflow_are_not_public_and_workers_get_tracking_uri_and_auth():
    cfg = _aws()
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "start-mlflow.sh s3://" in head_start
    # The inbound rules `ray up` authorises on the cluster's security group: Ray's defaults (all traffic within the
    # group, SSH from anywhere) plus the config's own IpPermissions. No node type brings its own group.
    aws_config = pytest.importorskip("ray.autoscaler._private.aws.config")
    assert not any("SecurityGroupIds" in t["node_config"] for t in cfg["available_node_types"].values())
    rules = aws_config._create_default_inbound_rules(
        {"sg-cluster"}, cfg["provider"].get("security_group", {}).get("IpPermissions", []))
    outside = [r for r in rules if r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("PrefixListIds")]
    assert outside and len(rules) > len(outside)  # the SSH rule and the intra-cluster rule both exist
    for r in outside:  # open to addresses outside the cluster: SSH only, nothing for dashboard, GCS or MLflow
        assert (r["IpProtocol"], r["FromPort"], r["ToPort"]) == ("tcp", 22, 22), r
    for r in rules:
        if r not in outside:
            assert [p["GroupId"] for p in r["UserIdGroupPairs"]] == ["sg-cluster"], r  # the cluster's own nodes
    assert "node-env.sh" in " ".join(cfg["head_setup_commands"])
    assert "node-env.sh us-west-2 $RAY_HEAD_IP" in " ".join(cfg["worker_setup_commands"])
    assert "$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])
    env_script = (SCRIPTS / "node-env.sh").read_text()
    assert "RAY_AUTH_MODE=token" in env_script and "MLFLOW_TRACKING_URI=http://" in env_script
    mlflow_script = (SCRIPTS / "start-mlflow.sh").read_text()
    assert "0.0.0.0" not in mlflow_script
    for remote, local in cfg["file_mounts"].items():
        assert (ROOT / local).is_dir(), local  # relative to the repository root, where `ray up` runs


def test_node_scripts_are_valid_bash_and_executable():
    for f in sorted(SCRIPTS.glob("*.sh")):
        subprocess.run(["bash", "-n", str(f)], check=True)
        assert f.stat().st_mode & stat.S_IXUSR, f"{f} is not executable"
        assert f.read_text().startswith("#!/usr/bin/env bash")


# ---- KubeRay ---------------------------------------------------------------------------------------------

def test_kuberay_raycluster_and_rayjob_structure():
    import ray

    docs = _kube_docs()
    (rc,) = [d for d in docs["raycluster.yaml"] if d["kind"] == "RayCluster"]
    (rj,) = [d for d in docs["rayjob.yaml"] if d["kind"] == "RayJob"]
    for d in (rc, rj):
        assert d["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec.get("authOptions", {}).get("mode") == "token"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"].get("num-cpus") == "0"
    groups = spec["workerGroupSpecs"]
    assert {g["groupName"] for g in groups} >= {"gpu-spot", "gpu-ondemand"}
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        (c,) = g["template"]["spec"]["containers"]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert any(t.get("key") == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))
    for pod in [head["template"]["spec"]] + [g["template"]["spec"] for g in groups]:
        assert pod["serviceAccountName"] == "nas-ray"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert not pod.get("hostNetwork")
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # The RayJob brings up exactly the cluster of raycluster.yaml, and runs the project's search entrypoint.
    assert rj["spec"]["rayClusterSpec"] == spec
    assert "workloads/search.py" in rj["spec"]["entrypoint"] and "--config" in rj["spec"]["entrypoint"]
    assert rj["spec"]["shutdownAfterJobFinishes"] is True


def test_kuberay_raycluster_reads_as_the_pinned_rays_autoscaler_reads_it():
    """The RayCluster (and the RayJob's copy) through the reader of the pinned Ray's KubeRay autoscaler, which turns
    the custom resource into its node types and validates them against its own schema: each worker group's GPUs,
    replica bounds and the ``hw:<profile>`` resource (whose rayStartParams quoting it parses) as the project means
    them, and a head that runs no trials. Not KubeRay's CRD schema (no installable package carries it)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    docs = _kube_docs()
    (rc,) = [d for d in docs["raycluster.yaml"] if d["kind"] == "RayCluster"]
    (rj,) = [d for d in docs["rayjob.yaml"] if d["kind"] == "RayJob"]
    # applied with `kubectl -n nas`: the API server fills in the namespace the autoscaler reads
    for cr in (rc, {"metadata": rj["metadata"], "spec": rj["spec"]["rayClusterSpec"]}):
        cfg = _derive_autoscaling_config_from_ray_cr({**copy.deepcopy(cr), "metadata": {**cr["metadata"],
                                                                                      "namespace": "nas"}})
        types = cfg["available_node_types"]
        assert types["headgroup"]["resources"].get("CPU") == 0 and "GPU" not in types["headgroup"]["resources"]
        for g in cr["spec"]["workerGroupSpecs"]:
            t = types[g["groupName"]]
            (c,) = g["template"]["spec"]["containers"]
            assert (t["min_workers"], t["max_workers"]) == (g["minReplicas"], g["maxReplicas"])
            assert t["resources"]["GPU"] == int(c["resources"]["limits"]["nvidia.com/gpu"])
            assert t["resources"]["CPU"] == int(c["resources"]["limits"]["cpu"])
            assert t["resources"]["hw:cuda-nvidia-a10g"] == 1, t["resources"]
        assert cfg["idle_timeout_minutes"] == cr["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] / 60


def test_kuberay_mlflow_and_service_account():
    docs = _kube_docs()
    (svc,) = [d for d in docs["mlflow.yaml"] if d["kind"] == "Service"]
    (dep,) = [d for d in docs["mlflow.yaml"] if d["kind"] == "Deployment"]
    assert svc["metadata"]["name"] == "mlflow" and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"][0]["port"] == 5000
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    args = " ".join(pod["containers"][0]["args"])
    assert "--artifacts-destination=s3://" in args and "--allowed-hosts=" in args
    assert "disable-security-middleware" not in args and "--allowed-hosts=*" not in args
    sas = {d["metadata"]["name"]: d for d in docs["serviceaccount.yaml"]}
    assert set(sas) == {"nas-ray", "nas-mlflow"} and all(d["kind"] == "ServiceAccount" for d in sas.values())
    for sa in sas.values():
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    roles = {n: sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for n, sa in sas.items()}
    assert roles["nas-ray"] != roles["nas-mlflow"]  # MLflow's own identity: its artifact prefix only


def test_kuberay_exposes_nothing_and_uses_one_image_tag_with_aws():
    docs = _kube_docs()
    image = _aws()["docker"]["image"]
    all_images = []
    for name, ds in docs.items():
        for d in ds:
            assert d["kind"] not in ("Ingress", "Gateway", "HTTPRoute"), name
            if d["kind"] == "Service":
                assert d["spec"].get("type", "ClusterIP") == "ClusterIP", name
            for st in _walk(d, "serviceType"):
                assert st == "ClusterIP", name
            for port_list in _walk(d, "ports"):
                for p in port_list:
                    assert "hostPort" not in p and "nodePort" not in p, (name, p)
            for hn in _walk(d, "hostNetwork"):
                assert hn is not True, name
            all_images += _images(d)
    assert all_images and set(all_images) == {image}, set(all_images)


# ---- KubeRay against the Kubernetes schemas, and who reaches what ---------------------------------------------------
#
# kubernetes-validate (PyPI) ships the Kubernetes JSON schemas. Core kinds (ServiceAccount, NetworkPolicy, Service,
# Deployment, ConfigMap, PersistentVolumeClaim) are checked as they are. The RayCluster and RayJob custom resources
# are not: no installable package carries KubeRay's CRD schema, so their pod templates (head, worker groups, the
# RayJob submitter) and the autoscaler sidecar's security context are checked as Kubernetes PodTemplates, strictly
# (an unknown or misspelt field fails), and the rest of the custom resources only by the structure tests above.

K8S_VERSION = "1.33"  # EKS standard support; NetworkPolicy, PodTemplate, seccompProfile are stable long before


def _k8s_validate(obj: dict) -> None:
    try:
        kv.validate(obj, K8S_VERSION, strict=True)
    except kv.ValidationError as e:
        raise AssertionError(f"{obj['kind']} {obj.get('metadata', {}).get('name')}: {e.message}") from None


def _pod_templates() -> dict[str, dict]:
    """Every pod template of the Ray manifests, named: the head's and each worker group's (RayCluster and RayJob),
    and the RayJob's submitter."""
    docs = _kube_docs()
    out = {}
    for fname, kind, spec_of in (("raycluster.yaml", "RayCluster", lambda d: d["spec"]),
                                 ("rayjob.yaml", "RayJob", lambda d: d["spec"]["rayClusterSpec"])):
        (d,) = [x for x in docs[fname] if x["kind"] == kind]
        spec = spec_of(d)
        out[f"{kind}/head"] = spec["headGroupSpec"]["template"]
        for g in spec["workerGroupSpecs"]:
            out[f"{kind}/{g['groupName']}"] = g["template"]
        if kind == "RayJob":
            out["RayJob/submitter"] = d["spec"]["submitterPodTemplate"]
    (dep,) = [d for d in docs["mlflow.yaml"] if d["kind"] == "Deployment"]
    out["Deployment/mlflow"] = dep["spec"]["template"]
    return out


def test_kuberay_core_kinds_pass_the_kubernetes_schemas():
    kinds = set()
    for name, ds in _kube_docs().items():
        for d in ds:
            if d["apiVersion"].startswith("ray.io/"):
                continue  # the custom resources: their pod templates are checked below
            _k8s_validate(d)
            kinds.add(d["kind"])
    assert kinds >= {"ServiceAccount", "NetworkPolicy", "Service", "Deployment", "ConfigMap", "PersistentVolumeClaim"}


def test_kuberay_pod_templates_pass_the_kubernetes_schemas():
    templates = _pod_templates()
    assert len(templates) == 8  # head + 2 worker groups, twice; the submitter; MLflow
    for name, tpl in templates.items():
        _k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name.replace("/", "-").lower()},
                       "template": tpl})
    for fname, spec_path in (("raycluster.yaml", ("spec",)), ("rayjob.yaml", ("spec", "rayClusterSpec"))):
        (d,) = [x for x in _kube_docs()[fname] if x["apiVersion"] == "ray.io/v1"]
        spec = d
        for k in spec_path:
            spec = spec[k]
        sc = spec["autoscalerOptions"]["securityContext"]  # KubeRay copies it onto the autoscaler container
        _k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "autoscaler"}, "template": {
            "spec": {"containers": [{"name": "autoscaler", "image": "x", "securityContext": sc}]}}})
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]


def test_every_pod_is_non_root_without_escalation_capabilities_or_default_seccomp():
    for name, tpl in _pod_templates().items():
        pod = tpl["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        for c in pod["containers"] + pod.get("initContainers", []):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert not csc.get("privileged") and not csc.get("capabilities", {}).get("add"), (name, c["name"])
            assert csc.get("runAsUser", 1000) != 0 and csc.get("runAsNonRoot", True) is True, (name, c["name"])


def test_mlflow_runs_behind_basic_auth_with_its_own_identity_and_secrets_from_the_environment():
    docs = _kube_docs()
    (dep,) = [d for d in docs["mlflow.yaml"] if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["command"] + c["args"]
    assert "--app-name=basic-auth" in args
    assert not any("backend-store-uri" in a or "password" in a.lower() or "://" in a and "@" in a for a in args), args
    env = {e["name"]: e for e in c["env"]}
    for name, (secret, key) in {"MLFLOW_AUTH_ADMIN_PASSWORD": ("mlflow-auth", "admin-password"),
                                "MLFLOW_FLASK_SERVER_SECRET_KEY": ("mlflow-auth", "flask-secret-key")}.items():
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}, name
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("sqlite:////mlflow/")  # on the volume, no password
    ini = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    (cm,) = [d for d in docs["mlflow.yaml"] if d["kind"] == "ConfigMap"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    (vol,) = [n for n, v in vols.items() if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
    assert ini == f"{mounts[vol]}/basic_auth.ini" and "basic_auth.ini" in cm["data"]
    assert "admin_password" not in cm["data"]["basic_auth.ini"]  # from the Secret, through the environment
    assert pod["serviceAccountName"] == "nas-mlflow" and pod["automountServiceAccountToken"] is False
    # the Ray pods record with their own MLflow user, from a Secret
    for name, tpl in _pod_templates().items():
        if name.endswith(("submitter", "mlflow")):
            continue
        for c in tpl["spec"]["containers"]:
            renv = {e["name"]: e for e in c["env"]}
            assert renv["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-client", name
            assert renv["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-client", name
    for f in _cluster_files():
        assert "MLFLOW_AUTH_ADMIN_PASSWORD: " not in f.read_text() and "admin_password =" not in f.read_text(), f


def _selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist)
    selects ``labels``; the empty selector selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        if (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels) or \
                (op == "In" and labels.get(k) not in vals) or (op == "NotIn" and labels.get(k) in vals):
            return False
    return True


def _admitted(policies: list[dict], dst: dict, src: dict, src_ns: dict | None, port: int) -> bool:
    """Whether NetworkPolicies admit a TCP connection to pod labels ``dst`` (in the policies' namespace) from pod
    labels ``src`` in a namespace with labels ``src_ns`` (None: the same namespace) on ``port``."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], dst)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True  # no policy isolates the pod
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            if rule.get("ports") and not any(pt.get("port") == port and pt.get("protocol", "TCP") == "TCP"
                                             for pt in rule["ports"]):
                continue
            for peer in rule.get("from", []):
                if "ipBlock" in peer:
                    continue
                if "namespaceSelector" in peer:
                    if not _selects(peer["namespaceSelector"], src_ns or {"kubernetes.io/metadata.name": "nas"}):
                        continue
                elif src_ns is not None:
                    continue  # a bare podSelector means pods of the policy's own namespace
                if _selects(peer.get("podSelector", {}), src):
                    return True
    return False


def test_network_policies_let_only_ray_pods_and_users_reach_mlflow_and_the_dashboard():
    policies = [d for d in _kube_docs()["networkpolicy.yaml"]]
    assert all(d["kind"] == "NetworkPolicy" for d in policies)
    mlflow = {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/part-of": "nas-proxyless"}
    head = {"ray.io/cluster": "nas-proxyless", "ray.io/node-type": "head"}
    worker = {"ray.io/cluster": "nas-proxyless", "ray.io/node-type": "worker", "ray.io/group": "gpu-spot"}
    job_worker = {"ray.io/cluster": "nas-search-abcde", "ray.io/node-type": "worker"}  # a RayJob's own cluster
    submitter = {"app.kubernetes.io/component": "ray-job-submitter"}
    users_ns = {"kubernetes.io/metadata.name": "ingress-nginx", "nas-proxyless/ui-access": "true"}
    users = {"app.kubernetes.io/name": "ingress-nginx", "nas-proxyless/ui-access": "true"}
    operator_ns = {"kubernetes.io/metadata.name": "kuberay-system"}
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    stranger = {"app": "something-else"}
    other_ns = {"kubernetes.io/metadata.name": "team-b"}
    # MLflow: the Ray pods and the users' ingress, on 5000 only
    for src in (head, worker, job_worker):
        assert _admitted(policies, mlflow, src, None, 5000), src
    assert _admitted(policies, mlflow, users, users_ns, 5000)
    assert not _admitted(policies, mlflow, users, users_ns, 22)
    for src, ns in ((stranger, None), (submitter, None), (stranger, other_ns), (users, other_ns), (head, other_ns),
                    (operator, operator_ns)):
        assert not _admitted(policies, mlflow, src, ns, 5000), (src, ns)
    # the dashboard and Jobs API: Ray pods, the submitter, the KubeRay operator, the users' ingress
    for src, ns in ((worker, None), (job_worker, None), (submitter, None), (operator, operator_ns), (users, users_ns)):
        assert _admitted(policies, head, src, ns, 8265), (src, ns)
    for src, ns in ((stranger, None), (stranger, other_ns), (users, other_ns), (mlflow, None)):
        assert not _admitted(policies, head, src, ns, 8265), (src, ns)
    # GCS and the workers: Ray pods only
    assert _admitted(policies, head, worker, None, 6379) and _admitted(policies, worker, head, None, 10002)
    for src, ns in ((users, users_ns), (submitter, None), (stranger, None), (mlflow, None)):
        assert not _admitted(policies, head, src, ns, 6379), (src, ns)
        assert not _admitted(policies, worker, src, ns, 10002), (src, ns)
    # and nothing else in the namespace is open
    assert not _admitted(policies, stranger, stranger, None, 80)


def test_no_secrets_and_only_documented_placeholders_in_cluster_files():
    guide = GUIDE.read_text()
    seen = set()
    for f in _cluster_files() + [ROOT / "Dockerfile"]:
        text = f.read_text()
        assert not any(p.search(text) for p in SECRET_PATTERNS), f
        seen |= set(PLACEHOLDER.findall(text))
    assert seen <= KNOWN_PLACEHOLDERS, seen - KNOWN_PLACEHOLDERS
    for ph in seen:
        assert ph in guide, f"{ph} is not explained in the README's operator guide"


# ---- node scripts, run for real against moto (SSM + S3) and a local MLflow ---------------------------------

def _script_env(s3_server, home: Path, **extra) -> dict[str, str]:
    return _base_env({**s3_server.env(), "HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true",
                      "MLFLOW_S3_ENDPOINT_URL": s3_server.url, **extra})


def test_node_env_script_writes_token_and_shell_env(s3_server, tmp_path):
    import boto3

    ssm = boto3.client("ssm", endpoint_url=s3_server.url, region_name=s3_server.region,
                       aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key)
    param = f"/nas-test-{os.getpid()}/ray-auth-token"
    ssm.put_parameter(Name=param, Value="f" * 64, Type="SecureString", Overwrite=True)
    mlflow_param = f"/nas-test-{os.getpid()}/mlflow-password"
    ssm.put_parameter(Name=mlflow_param, Value="Mlf-pw-123456", Type="SecureString", Overwrite=True)
    home = tmp_path / "home"
    home.mkdir()
    env = _script_env(s3_server, home)
    for _ in range(2):  # idempotent: a second run (ray up again) leaves one copy of each line
        cp = subprocess.run(["bash", str(SCRIPTS / "node-env.sh"), s3_server.region, "10.0.0.5", param, mlflow_param],
                            env=env, check=True, capture_output=True, text=True, timeout=60)
        assert "Mlf-pw-123456" not in cp.stdout + cp.stderr
    token = home / ".ray" / "auth_token"
    assert token.read_text() == "f" * 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    creds = home / ".mlflow" / "credentials"  # where MLflow's client reads them: the URI carries none
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert creds.read_text() == "[mlflow]\nmlflow_tracking_username = nas\nmlflow_tracking_password = Mlf-pw-123456\n"
    assert "Mlf-pw-123456" not in (home / ".bashrc").read_text()
    rc = (home / ".bashrc").read_text()
    assert rc.count("export RAY_AUTH_MODE=token") == 1
    assert rc.count("export MLFLOW_TRACKING_URI=http://10.0.0.5:5000") == 1


def _cmdlines(pgid: int) -> list[str]:
    """The command lines of the processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, IndexError, ValueError):
                continue
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_start_mlflow_script_serves_with_auth_and_s3_artifacts_and_no_secret_in_argv(s3_server, tmp_path, backend):
    import boto3

    bucket = s3_server.new_bucket()
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = _script_env(s3_server, home, AWS_DEFAULT_REGION=s3_server.region, MLFLOW_HOST="127.0.0.1",
                      MLFLOW_PORT=str(port), MLFLOW_WORKERS="1")
    ssm = boto3.client("ssm", endpoint_url=s3_server.url, region_name=s3_server.region,
                       aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key)
    password = f"Mlf-{os.urandom(6).hex()}"
    base = f"/nas-test-{os.getpid()}-{backend}"
    ssm.put_parameter(Name=f"{base}/mlflow-password", Value=password, Type="SecureString", Overwrite=True)
    pidfile = home / "mlflow" / "server.pid"
    with contextlib.ExitStack() as stack:
        secrets_ = [password]
        if backend == "postgresql":
            pg = stack.enter_context(start_postgres())
            pg.create_database("mlflow")
            ssm.put_parameter(Name=f"{base}/mlflow-backend-uri", Value=pg.uri("mlflow"), Type="SecureString",
                              Overwrite=True)
            secrets_.append(pg.password)
        stack.callback(_stop_script_server, pidfile)
        refused = subprocess.run(["bash", str(SCRIPTS / "start-mlflow.sh"), f"s3://{bucket}/mlflow",
                                  f"{base}/mlflow-backend-uri", f"{base}/no-such-password"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "does not serve without authentication" in refused.stderr
        assert not pidfile.exists()
        cp = subprocess.run(["bash", str(SCRIPTS / "start-mlflow.sh"), f"s3://{bucket}/mlflow",
                             f"{base}/mlflow-backend-uri", f"{base}/mlflow-password"], env=env, capture_output=True,
                            text=True, timeout=150)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert f"backend: {backend}" in cp.stdout and "basic auth" in cp.stdout
        argv = _cmdlines(int(pidfile.read_text()))
        assert any("mlflow" in a for a in argv)
        assert not any(s in a for s in secrets_ for a in argv), argv  # no password on any command line
        for f in ("basic_auth.ini", "flask-secret"):
            assert stat.S_IMODE((home / "mlflow" / f).stat().st_mode) == 0o600, f
        with pytest.raises(urllib.error.HTTPError) as e:  # no credentials: refused
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1")
        assert e.value.code == 401
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"http://nas:{password}@127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("script-smoke"))
        f = tmp_path / "a.txt"
        f.write_text("x")
        client.log_artifact(run.info.run_id, str(f))
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any(k.startswith("mlflow/") and k.endswith(f"{run.info.run_id}/artifacts/a.txt") for k in keys)


def _stop_script_server(pidfile: Path) -> None:
    if pidfile.exists():  # the script's server runs in its own session: stop exactly that group
        pgid = int(pidfile.read_text())
        try:
            os.killpg(pgid, signal.SIGTERM)
            for _ in range(50):
                os.killpg(pgid, 0)
                time.sleep(0.2)
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- operator guide --------------------------------------------------------------------------------------

def test_operator_guide_covers_the_workflow():
    text = GUIDE.read_text()
    for must in ("docker build", "docker push", "ray up cluster/aws.yaml", "ray dashboard cluster/aws.yaml",
                 "nas data prepare --imagefolder", "--shard-size", "nas latency build --hardware",
                 "--space proxyless-imagenet", "ray job submit --working-dir .", "workloads/search.py",
                 "workloads/sweep.py", "configs/imagenet-gpu.yaml", "ray job logs", "nas pareto",
                 "ray down cluster/aws.yaml", "ray start --head", "ray start --address", "RAY_API_SERVER_ADDRESS",
                 "RAY_AUTH_MODE", "kubectl port-forward", "cluster/kuberay/rayjob.yaml"):
        assert must in text, must
    assert "### 8. Cost" in text and "GPU-hours" in text and "benchmarks.search_cost" in text
