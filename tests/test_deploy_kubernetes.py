"""docker/kubernetes: the Kustomize base against the Kubernetes schemas, the KEDA resources against KEDA's."""

from __future__ import annotations

import copy
import json
import shutil
from urllib.parse import urlsplit

import kubernetes_validate
import psycopg
import pytest
import yaml
from deploy_helpers import (
    DOCKER,
    OWNER_ROLE,
    READER_ROLE,
    ROOT,
    WORKER_ROLE,
    image_env,
    run,
    strict,
)
from jsonschema import Draft202012Validator

# ------------------------------------------------------------------------------------------------ Kubernetes

K8S = DOCKER / "kubernetes"
# kubernetes-validate bundles the schemas of Kubernetes 1.25 up to its own version: the base is checked against
# one, pinned here so that a newer kubernetes-validate does not change the test.
KUBERNETES_VERSION = "1.32"
KEDA_SCHEMAS = {"ScaledObject": "keda-scaledobject.yaml", "TriggerAuthentication": "keda-triggerauthentication.yaml"}
# KEDA's postgresql scaler (keda.sh/docs/latest/scalers/postgresql; pkg/scalers/postgresql_scaler.go): trigger
# metadata, and the parameters a TriggerAuthentication may give it.
KEDA_POSTGRESQL_METADATA = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "dbName",
    "sslmode",
    "passwordFromEnv",
}
KEDA_POSTGRESQL_AUTH = {"connection", "host", "port", "userName", "dbName", "sslmode", "password"}
KEDA_POSTGRESQL_PARTS = {"host", "port", "userName", "dbName", "sslmode"}  # all needed without a connection


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    """Every document of every file kustomization.yaml lists (each file must exist and parse)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())]
    assert all(isinstance(doc, dict) for doc in docs)
    return docs


def find(manifests: list[dict], kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in manifests if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def test_kustomization_lists_every_manifest_but_the_optional_one() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert present - listed == {"servicemonitor.yaml"}  # needs the Prometheus Operator's CRD: documented
    assert listed <= present


def test_kustomize_renders_the_base(manifests: list[dict]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (every listed file was parsed by the fixture)")
    rendered = list(yaml.safe_load_all(run([kubectl, "kustomize", str(K8S)]).stdout))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in manifests
    )
    images = {c["image"] for d in rendered if "template" in d.get("spec", {}) for c in containers(d)}
    assert images == {"syncer:0.1.0"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "syncer" for d in rendered)


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_core_manifests_match_the_kubernetes_schemas(manifests: list[dict]) -> None:
    core = [doc for doc in manifests if not doc["apiVersion"].startswith("keda.sh/")]
    assert {doc["kind"] for doc in core} == {"ConfigMap", "Secret", "Job", "Deployment", "Service"}
    for doc in core:  # strict: an unknown or misspelt field is an error
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_keda_resources_match_the_keda_crd_schemas(manifests: list[dict]) -> None:
    validators = {
        kind: Draft202012Validator(strict(yaml.safe_load((ROOT / "tests" / "schemas" / name).read_text())))
        for kind, name in KEDA_SCHEMAS.items()
    }
    keda = [doc for doc in manifests if doc["apiVersion"] == "keda.sh/v1alpha1"]
    assert sorted(doc["kind"] for doc in keda) == sorted(KEDA_SCHEMAS)
    for doc in keda:
        assert [e.message for e in validators[doc["kind"]].iter_errors(doc)] == []
    misspelt = copy.deepcopy(find(manifests, "ScaledObject"))
    misspelt["spec"]["cooldownPeriods"] = misspelt["spec"].pop("cooldownPeriod")
    misspelt["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 2000  # KEDA wants strings there
    assert len(list(validators["ScaledObject"].iter_errors(misspelt))) == 2


def test_keda_scales_the_workers_on_pending_rows_with_documented_parameters(manifests: list[dict]) -> None:
    scaled = find(manifests, "ScaledObject")["spec"]
    deployment = find(manifests, "Deployment")
    assert (scaled["scaleTargetRef"]["kind"], scaled["scaleTargetRef"]["name"]) == (
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 0 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    assert scaled["pollingInterval"] > 0 and scaled["cooldownPeriod"] > 0
    (trigger,) = scaled["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "postgresql" and set(metadata) <= KEDA_POSTGRESQL_METADATA
    assert metadata["query"] == "SELECT syncer.pending_rows()"
    assert float(metadata["targetQueryValue"]) > 0 and float(metadata["activationTargetQueryValue"]) >= 0
    auth = find(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    given = {ref["parameter"] for ref in auth["secretTargetRef"]} | set(metadata)
    assert {ref["parameter"] for ref in auth["secretTargetRef"]} <= KEDA_POSTGRESQL_AUTH
    assert "connection" in given or given >= KEDA_POSTGRESQL_PARTS
    for ref in auth["secretTargetRef"]:
        assert ref["key"] in find(manifests, "Secret", ref["name"])["stringData"]


def test_worker_deployment_probes_limits_and_least_privilege(manifests: list[dict]) -> None:
    deployment = find(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["args"] == ["run"]
    assert [(p["name"], p["containerPort"]) for p in worker["ports"]] == [("metrics", 9108)]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(worker["resources"]["requests"]) & set(worker["resources"]["limits"])
    assert pod["terminationGracePeriodSeconds"] > 60  # longer than a batch's request (SYNCER_REQUEST_TIMEOUT)
    env = {e["name"]: e for e in worker["env"]}
    assert env["SYNCER_APPLY"]["value"] == "never"
    assert env["SYNCER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "syncer-worker"
    assert find(manifests, "ConfigMap", worker["envFrom"][0]["configMapRef"]["name"])
    service = find(manifests, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("metrics", "metrics")]
    monitor = yaml.safe_load((K8S / "servicemonitor.yaml").read_text())["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]


def test_pods_run_non_root_on_a_read_only_root_with_writable_data(manifests: list[dict]) -> None:
    data_dir = image_env("full")["SYNCER_DATA_DIR"]
    for doc in (find(manifests, "Deployment"), find(manifests, "Job")):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {data_dir, "/tmp"} <= mounts


def test_apply_job_runs_as_the_owner_and_grants(manifests: list[dict]) -> None:
    job = find(manifests, "Job")
    (apply,) = containers(job)
    assert apply["args"][-1] == (
        f"syncer apply && syncer grant worker {WORKER_ROLE} && syncer grant reader {READER_ROLE}"
    )
    env = {e["name"]: e for e in apply["env"]}
    assert env["SYNCER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "syncer-owner"
    owner_url = find(manifests, "Secret", "syncer-owner")["stringData"]["database-url"]
    worker_url = find(manifests, "Secret", "syncer-worker")["stringData"]["database-url"]
    assert (urlsplit(owner_url).username, urlsplit(worker_url).username) == (OWNER_ROLE, WORKER_ROLE)
    worker_refs = json.dumps(find(manifests, "Deployment"))
    assert "syncer-owner" not in worker_refs  # the owner's credentials never reach a worker


def test_scaler_query_runs_on_a_migrated_database(db_url: str, manifests: list[dict]) -> None:
    query = find(manifests, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    with psycopg.connect(db_url) as conn:
        try:
            (value,) = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedFunction:
            pytest.skip("syncer.pending_rows() is not in syncer's schema yet")
    assert isinstance(value, int) and value == 0  # KEDA reads it as a number; nothing is queued here
