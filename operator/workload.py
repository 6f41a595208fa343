"""What a resource becomes in the cluster: its batch/v1 Job (and, for multi-node training, a headless Service).

Pure functions: `render(resource, dependency_outputs, config)` is what both the operator and `freeatm render`
call. The pod runs `freeatm-runtime <command>` with the *resolved* resource in $FREEATM_SPEC (every `ref`
replaced by the dependency's output URI), see runtime/cli.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from freeatm.api import KINDS, MaskPretrainJob, Outputs, Resource, SyntheticDataset, parse_resource
from freeatm.api.digest import spec_digest
from freeatm.api.references import dependencies
from freeatm.api.resolve import UnresolvedReference
from freeatm.api.resolve import resolve as resolve_references
from freeatm.api.vocabulary import EXIT_INVALID

from .config import OperatorConfig
from .overrides import merge

LABEL_KIND = "freeatm.io/kind"
LABEL_NAME = "freeatm.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "freeatm-operator"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_GENERATION = "freeatm.io/generation"  # the resource's metadata.generation the Job serves
ANNOTATION_SPEC_DIGEST = "freeatm.io/spec-digest"  # what the user declared (declared_digest)
ANNOTATION_INPUTS_DIGEST = "freeatm.io/inputs-digest"  # the dependency outputs its refs resolved to
RESULT_FINALIZER = "freeatm.io/result"
"""On every workload pod: the pod (and, through blockOwnerDeletion, its Job) stays until the operator has read
its termination message into the resource's status, so ttlSecondsAfterFinished cannot take the result first."""
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"  # set by the Job controller on the Job's pods
CONTAINER = "runtime"
JOB_SUFFIX = {"SyntheticDataset": "gen", "MaskPretrainJob": "train", "EvalJob": "eval"}

DependencyOutputs = Mapping[tuple[str, str], Mapping[str, Any]]

MissingDependencyOutput = UnresolvedReference  # a ref whose dependency has no outputs.uri yet


def job_name(kind: str, name: str) -> str:
    """Deterministic Job name: <name>-gen, <name>-train or <name>-eval (names are ≤ 48 characters)."""
    return f"{name}-{JOB_SUFFIX[kind]}"


def service_name(kind: str, name: str) -> str:
    """Headless Service of a multi-node Job (a DNS-1035 label: starts with a letter)."""
    base = job_name(kind, name)
    return base if base[0].isalpha() else f"s-{base}"


def selector_labels(kind: str, name: str) -> dict[str, str]:
    """Labels that identify the workload of one resource (Job, pods, Service)."""
    return {LABEL_KIND: kind, LABEL_NAME: name}


def workload_labels(kind: str, name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "freeatm",
        "app.kubernetes.io/component": KINDS[kind].runtime_command,
        "app.kubernetes.io/instance": name,
        LABEL_MANAGED_BY: MANAGED_BY,
        **selector_labels(kind, name),
    }


def _generation(resource: Resource) -> int | None:
    extra = resource.metadata.model_extra or {}
    gen = extra.get("generation")
    return int(gen) if gen is not None else None


def resolve(resource: Resource, dependency_outputs: DependencyOutputs | None = None) -> dict[str, Any]:
    """The resolved manifest the runtime reads: every `ref` replaced by the dependency's output URI."""
    outputs = {key: Outputs.model_validate(out) for key, out in (dependency_outputs or {}).items()}
    doc = resolve_references(resource, outputs).to_wire()
    doc.pop("status", None)
    meta = resource.metadata
    doc["metadata"] = {"name": meta.name, **({"namespace": meta.namespace} if meta.namespace else {})}
    if meta.labels:
        doc["metadata"]["labels"] = dict(meta.labels)
    return doc


def planned_outputs(resources: list[Resource]) -> dict[tuple[str, str], dict[str, Any]]:
    """The outputs each resource will have (its spec.output.uri): what `freeatm render` hands to dependents."""
    return {(r.kind, r.metadata.name): {"uri": r.spec.output.uri} for r in resources}  # type: ignore[attr-defined]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _secret_names(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "secretRef" and isinstance(v, dict) and v.get("name"):
                found.append(v["name"])
            else:
                found.extend(_secret_names(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(_secret_names(v))
    return list(dict.fromkeys(found))


def pvc_claims(resolved_spec: Mapping[str, Any]) -> list[str]:
    """Claims named by pvc://claim/... URIs anywhere in the resolved spec, in order of appearance."""
    claims = [s[len("pvc://") :].split("/", 1)[0] for s in _strings(resolved_spec) if s.startswith("pvc://")]
    return list(dict.fromkeys(c for c in claims if c))


def _volume_name(claim: str) -> str:
    name = "pvc-" + re.sub(r"[^a-z0-9-]", "-", claim.lower())
    if len(name) > 63 or name != "pvc-" + claim:
        name = name[:52].rstrip("-") + "-" + hashlib.sha1(claim.encode()).hexdigest()[:10]
    return name


def _processes(resource: Resource) -> tuple[int, int]:
    """(nodes, processes per node) of a workload."""
    if isinstance(resource, MaskPretrainJob):
        d = resource.spec.distributed
        return d.nodes, max(d.gpus_per_node, 1)
    return 1, 1


def _torchrun(
    resource: MaskPretrainJob, job: str, config: OperatorConfig
) -> tuple[list[str], list[str], dict[str, str]]:
    """command, args and env of a multi-process training pod, built with torchx's DDP component."""
    from torchx.components.dist import ddp  # torchx imports no torch; keep it out of module import anyway
    from torchx.specs import macros

    nodes, nproc = _processes(resource)
    app = ddp(
        KINDS[resource.kind].runtime_command,
        m="freeatm.runtime.cli",
        j=f"{nodes}x{nproc}",
        name=job,
        image=config.runtime_image,
        rdzv_port=config.rendezvous_port,
        rdzv_backend="c10d",
    )
    role = macros.Values(
        img_root="", app_id=job, replica_id="$(JOB_COMPLETION_INDEX)", rank0_env="FREEATM_RANK0_HOST"
    ).apply(app.roles[0])
    env = {k: v for k, v in role.env.items() if not k.startswith("TORCHX_")}
    return [role.entrypoint], list(role.args), env


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def render(
    resource: Resource | Mapping[str, Any],
    dependency_outputs: DependencyOutputs | None = None,
    config: OperatorConfig | None = None,
) -> list[dict[str, Any]]:
    """The Job (first) and, for multi-node training, the headless Service that run `resource`.

    `dependency_outputs` maps (kind, name) of each dependency to its status.outputs (wire form); raises
    MissingDependencyOutput when a ref cannot be resolved from it.
    """
    if not isinstance(resource, Resource):
        resource = parse_resource(dict(resource))
    config = config or OperatorConfig()
    kind, name, spec = resource.kind, resource.metadata.name, resource.spec  # type: ignore[attr-defined]
    command = KINDS[kind].runtime_command
    jname = job_name(kind, name)
    resolved = resolve(resource, dependency_outputs)
    # the Job's business, not the runtime's (and not part of the spec digest)
    resolved["spec"].pop("suspend", None)
    labels = workload_labels(kind, name)
    nodes, nproc = _processes(resource)
    multi_node = nodes > 1

    env = [
        {"name": "FREEATM_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        _env("FREEATM_RESOURCE", f"{kind}/$(FREEATM_NAMESPACE)/{name}"),
        _env("FREEATM_SPEC", json.dumps(resolved, separators=(",", ":"), sort_keys=True)),
        _env("FREEATM_METRICS_PORT", str(config.runtime_metrics_port)),
        _env("FREEATM_PVC_ROOT", config.pvc_root),
        _env("PYTHONUNBUFFERED", "1"),
    ]
    env += [_env(k, v) for k, v in sorted(config.extra_env.items())]
    ports = [{"name": "metrics", "containerPort": config.runtime_metrics_port, "protocol": "TCP"}]
    if nodes * nproc > 1:
        cmd, args, torch_env = _torchrun(resource, jname, config)  # type: ignore[arg-type]
        env += [_env(k, v) for k, v in sorted(torch_env.items())]
        if multi_node:
            env.append(_env("FREEATM_RANK0_HOST", f"{jname}-0.{service_name(kind, name)}"))
            ports.append({"name": "c10d", "containerPort": config.rendezvous_port, "protocol": "TCP"})
    else:
        cmd, args = ["freeatm-runtime"], [command]

    requests = {k: v for k, v in (spec.resources.requests if spec.resources else {}).items()}
    limits = {k: v for k, v in (spec.resources.limits if spec.resources else {}).items()}
    if isinstance(resource, MaskPretrainJob) and resource.spec.distributed.gpus_per_node:
        limits["nvidia.com/gpu"] = resource.spec.distributed.gpus_per_node
        if "nvidia.com/gpu" in requests:
            requests["nvidia.com/gpu"] = resource.spec.distributed.gpus_per_node
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": cmd,
        "args": args,
        "env": env,
        "ports": ports,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if requests or limits:
        container["resources"] = {
            **({"requests": requests} if requests else {}),
            **({"limits": limits} if limits else {}),
        }
    secrets = _secret_names(resolved["spec"])
    if secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in secrets]

    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for claim in pvc_claims(resolved["spec"]):
        vname = _volume_name(claim)
        volumes.append({"name": vname, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": vname, "mountPath": f"{config.pvc_root.rstrip('/')}/{claim}"})
    if isinstance(resource, MaskPretrainJob):
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if mounts:
        container["volumeMounts"] = mounts

    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if volumes:
        pod_spec["volumes"] = volumes
    if spec.service_account_name or config.service_account:
        pod_spec["serviceAccountName"] = spec.service_account_name or config.service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.tolerations]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if multi_node:
        pod_spec["subdomain"] = service_name(kind, name)
    template: dict[str, Any] = {
        "metadata": {"labels": dict(labels), "finalizers": [RESULT_FINALIZER]},
        "spec": pod_spec,
    }
    if spec.pod_template:
        template = merge(template, spec.pod_template)

    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": {
            "rules": [
                # Bad input (EXIT_INVALID) cannot succeed on retry: fail the Job at once.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID]},
                },
                # Evictions, preemptions and node drains don't count against backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": template,
    }
    if isinstance(resource, SyntheticDataset) or multi_node:
        parallel = resource.spec.workers if isinstance(resource, SyntheticDataset) else nodes
        job_spec.update(completionMode="Indexed", completions=parallel, parallelism=parallel)
    else:
        job_spec.update(completions=1, parallelism=1)
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished

    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[LABEL_QUEUE] = spec.queue_name
    annotations = {ANNOTATION_SPEC_DIGEST: declared_digest(resource)}
    if (inputs := inputs_digest(resource, dependency_outputs or {})) is not None:
        annotations[ANNOTATION_INPUTS_DIGEST] = inputs
    generation = _generation(resource)
    if generation is not None:
        annotations[ANNOTATION_GENERATION] = str(generation)
    job_spec["suspend"] = spec.suspend
    metadata: dict[str, Any] = {"name": jname, "labels": job_labels, "annotations": annotations}
    if resource.metadata.namespace:
        metadata["namespace"] = resource.metadata.namespace
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
    objects = [job]
    if multi_node:
        svc_meta: dict[str, Any] = {"name": service_name(kind, name), "labels": dict(labels)}
        if resource.metadata.namespace:
            svc_meta["namespace"] = resource.metadata.namespace
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": svc_meta,
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "selector": selector_labels(kind, name),
                    "ports": [
                        {"name": "c10d", "port": config.rendezvous_port, "targetPort": config.rendezvous_port}
                    ],
                },
            }
        )
    return objects


def declared_digest(resource: Resource) -> str:
    """Digest of the spec as the user wrote it, `suspend` excluded: equal digests mean the same work, whatever
    the operator's configuration (runtime image, defaults of a newer version) renders around it."""
    declared = resource.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    declared.pop("suspend", None)
    return _digest(declared)


def ref_dependencies(resource: Resource) -> list[tuple[str, str]]:
    """The dependencies whose outputs the workload reads: its dataset and checkpoint refs, also when `dependsOn`
    names them too (an entry only in `dependsOn` is waited for, not read)."""
    return dependencies(ref for ref in resource.references() if ref.implied)


def inputs_digest(resource: Resource, dependency_outputs: DependencyOutputs) -> str | None:
    """Digest of the output URIs the refs resolve to; None while one of them is unknown."""
    uris = {}
    for kind, name in ref_dependencies(resource):
        uri = (dependency_outputs.get((kind, name)) or {}).get("uri")
        if not uri:
            return None
        uris[f"{kind}/{name}"] = uri
    return _digest(uris)


def _digest(value: Any) -> str:
    """The first 16 hex digits of `spec_digest`: short enough for an annotation, and already stored on Jobs."""
    return spec_digest(value).removeprefix("sha256:")[:16]


def bind_service(service: dict[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """The headless Service selecting the pods of exactly this Job (its controller uid), not those of an earlier
    Job of the same name that are still terminating. Without a uid (an emulator) it keeps the workload labels."""
    uid = (job.get("metadata") or {}).get("uid")
    if not uid:
        return service
    return {**service, "spec": {**service["spec"], "selector": {CONTROLLER_UID: uid}}}
