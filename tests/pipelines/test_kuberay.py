"""``configs/kuberay-rayjob.yaml``: what can be checked without a Kubernetes cluster.

The RayJob document was validated once against the KubeRay CRD (``ray.io_rayjobs.yaml``, v1 schema, of
ray-project/kuberay at commit feeaf72fa) with unknown fields rejected: no errors. These tests keep the
parts that tie the manifest to facefoundry consistent: the entry point runs the mounted config, the
output is where every pod writes, the config is valid, and the GPUs match the generator pool.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath

import pytest
import ray
import yaml

from facefoundry.config import load_config
from facefoundry.dataset.storage import is_remote

MANIFEST = Path(__file__).resolve().parents[2] / "configs" / "kuberay-rayjob.yaml"


@pytest.fixture(scope="module")
def docs() -> tuple[dict, dict]:
    found = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}
    assert set(found) == {"ConfigMap", "RayJob"}
    return found["ConfigMap"], found["RayJob"]


def _pod_spec(group: dict) -> dict:
    return group["template"]["spec"]


def _mounts(spec: dict) -> dict[str, dict]:
    """mountPath -> the volume mounted there, over every container of a pod."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for c in spec["containers"] for m in c.get("volumeMounts", [])}


def _under(path: str, mounts: dict[str, dict]) -> bool:
    return any(PurePosixPath(path).is_relative_to(mount) for mount in mounts)


def _entrypoint(job: dict) -> tuple[str, str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["facefoundry", "run"] and argv[3] == "--out" and len(argv) == 5, argv
    return argv[2], argv[4]


def test_rayjob_kind_and_ray_version(docs):
    _, job = docs
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__, "image, rayVersion and ray pin must agree"


def test_entrypoint_runs_the_mounted_config(docs, tmp_path):
    configmap, job = docs
    config_path, _ = _entrypoint(job)
    head = _mounts(_pod_spec(job["spec"]["rayClusterSpec"]["headGroupSpec"]))
    path = PurePosixPath(config_path)
    volume = head.get(str(path.parent))
    assert volume is not None and volume.get("configMap", {}).get("name") == configmap["metadata"]["name"], (
        f"{config_path} is not a key of ConfigMap {configmap['metadata']['name']} mounted in the head pod")
    assert path.name in configmap["data"]

    local = tmp_path / path.name
    local.write_text(configmap["data"][path.name])
    cfg = load_config(local, [])
    assert cfg.ray.address == "auto", "the job's driver must join the RayJob's cluster, not start its own"


def test_output_is_reachable_from_every_pod(docs):
    _, job = docs
    _, out = _entrypoint(job)
    if is_remote(out):
        return
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in pods:  # the driver writes run.json on the head; actors write shards on the workers
        assert _under(out, _mounts(_pod_spec(group))), f"--out {out} is not on a volume of {group.get('groupName')}"
    claims = {v["persistentVolumeClaim"]["claimName"] for g in pods for p, v in _mounts(_pod_spec(g)).items()
              if PurePosixPath(out).is_relative_to(p)}
    assert len(claims) == 1, f"every pod must mount the same volume at --out, got {claims}"


def test_worker_gpus_match_the_generator_pool(docs, tmp_path):
    configmap, job = docs
    config_path, _ = _entrypoint(job)
    local = tmp_path / "run.yaml"
    local.write_text(configmap["data"][PurePosixPath(config_path).name])
    cfg = load_config(local, [])
    total = 0
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for container in _pod_spec(group)["containers"]:
            resources = container["resources"]
            gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
            assert int(resources["requests"].get("nvidia.com/gpu", 0)) == gpus, "GPU requests must equal limits"
            total += gpus * group["replicas"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert total == cfg.ray.generator_actors * cfg.ray.generator_gpus, (
        f"{total} worker GPUs vs {cfg.ray.generator_actors} generator actors x {cfg.ray.generator_gpus} GPUs")
