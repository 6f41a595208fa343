"""Building blocks shared by the three resource types: base model, storage locations, pod settings."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qs, parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "freeatm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Job names get suffixes (-gen, -train, -eval, pod index): keep resource names well below 63 characters.
MAX_NAME_LENGTH = 48

# Label keys and values as the API server checks them (apimachinery validation.IsQualifiedName / IsValidLabelValue).
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# resource.Quantity: a decimal number with an optional binary or decimal suffix or exponent.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
# Resources that are not extended resources (their requests need no limits).
_NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage", "storage")

# A key that names a credential (aws_secret_access_key, HF_TOKEN, db-password), and values that are one whatever
# their key (AWS access key ids, Hugging Face and GitHub tokens, PEM private keys).
_CREDENTIAL_KEY = re.compile(
    r"(?i)(^|_)(access_?key(_?id)?|secret(_?access)?_?key|secret|password|passwd|token|session_?token"
    r"|credentials?|api_?key|private_?key)$"
)
_CREDENTIAL_VALUE = re.compile(
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b|\bhf_[A-Za-z0-9]{30,}|\bgh[pousr]_[A-Za-z0-9]{36}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


def names_credential(key: str) -> bool:
    """Whether `key` (a field, env var or annotation name; its part after a '/') names a credential."""
    return bool(_CREDENTIAL_KEY.search(key.rpartition("/")[2].replace("-", "_").replace(".", "_")))


def is_credential(value: str) -> bool:
    """Whether `value` looks like an access key, token or private key."""
    return bool(_CREDENTIAL_VALUE.search(value))


# The API server stores integers as int64; seeds feed numpy and torch generators (32 bits is what both take).
INT64 = 2**63 - 1
SEED = 2**32 - 1


class Model(BaseModel):
    """Base for every API type: camelCase on the wire, unknown fields are errors, field docstrings are the docs.
    Types are strict, as the CRD's schema is: "8" is not a number and true is not 1; NaN and ±inf are refused."""

    model_config = ConfigDict(
        strict=True,
        allow_inf_nan=False,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def list_as_tuple(value: Any) -> Any:
    """A JSON array for a tuple field (strict mode takes only Python tuples)."""
    return tuple(value) if isinstance(value, list) else value


Quantity = Annotated[str | int, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]
FreeForm = Annotated[dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]


def _shown(parts: SplitResult) -> str:
    """The URI for messages, without what may be a credential (user info, query)."""
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "…" if parts.query else "", ""))


def check_uri(
    uri: str, allowed: tuple[str, ...], what: str, params: dict[str, tuple[str, ...]] | None = None
) -> str:
    """Check `uri`: one of the `allowed` schemes, no credentials, no `..`, a query only of the parameters
    `params` names for its scheme; return it normalised (no `.` segments, repeated or trailing slashes)."""
    if any(c.isspace() or not c.isprintable() for c in uri):
        raise ValueError(f"{what} URI {uri!r} contains white space or control characters")
    parts = urlsplit(uri)
    if parts.scheme not in allowed:
        shown = parts.scheme + "://" if parts.scheme else "no scheme"
        raise ValueError(
            f"{what} URI {_shown(parts)!r} has {shown}; use one of: " + ", ".join(f"{s}://" for s in allowed)
        )
    if parts.username or parts.password:
        raise ValueError(
            f"{what} URI {_shown(parts)!r} carries credentials; put them in a Secret and reference it with "
            "secretRef"
        )
    query = (params or {}).get(parts.scheme, ())
    given = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    if parts.query and not query:
        raise ValueError(
            f"{what} URI {_shown(parts)!r} has a query (?…), which {parts.scheme}:// does not take; a signed "
            "URL's credentials belong in a Secret referenced with secretRef"
        )
    if set(given) - set(query) or (parts.query and not given):
        raise ValueError(
            f"{what} URI {_shown(parts)!r} takes only the parameters {', '.join(query)} (got "
            f"{', '.join(sorted(set(given) - set(query))) or parts.query!r})"
        )
    if parts.fragment:
        raise ValueError(f"{what} URI {_shown(parts)!r} has a fragment (#…); remove it")
    if parts.scheme != "file" and not parts.netloc:
        raise ValueError(
            f"{what} URI {uri!r} has no {'bucket' if parts.scheme == 's3' else 'name'} after {parts.scheme}://"
        )
    if parts.scheme == "file" and parts.netloc:
        raise ValueError(
            f"{what} URI {uri!r} has a host part {parts.netloc!r}: file:// takes an absolute path after the "
            f"third slash (file:///{parts.netloc}{parts.path} reads /{parts.netloc}{parts.path})"
        )
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise ValueError(f"{what} URI {uri!r} must be an absolute path: file:///abs/path")
    if parts.scheme == "pvc" and not _DNS_SUBDOMAIN.match(parts.netloc):
        raise ValueError(
            f"{what} URI {uri!r}: {parts.netloc!r} is not a PersistentVolumeClaim name (lower-case letters, "
            "digits, '-' and '.')"
        )
    segments = [s for s in parts.path.split("/") if s not in ("", ".")]
    if ".." in (unquote(s) for s in segments):
        root = {"s3": "bucket prefix", "pvc": "claim", "file": "root"}.get(parts.scheme, "location")
        raise ValueError(f"{what} URI {uri!r} contains '..'; a path must stay inside its {root}")
    path = "/" + "/".join(segments) if segments or parts.scheme == "file" else ""
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_int_query(uri: str, key: str, minimum: int) -> None:
    """The query parameter `key` of `uri`, when given, is an integer ≥ `minimum`."""
    for value in parse_qs(urlsplit(uri).query).get(key, []):
        if not value.isdigit() or int(value) < minimum:
            raise ValueError(f"URI {uri!r}: {key}={value!r} must be an integer ≥ {minimum}")


def find_inline_credentials(value: Any, path: str = "spec") -> list[str]:
    """Field paths under `value` whose key names a credential or whose string looks like one."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if isinstance(key, str) and names_credential(key) and not isinstance(item, dict):
                found.append(here)
            elif key == "env" and isinstance(item, list):
                for i, env in enumerate(item):
                    if (
                        isinstance(env, dict)
                        and names_credential(str(env.get("name", "")))
                        and "value" in env
                    ):
                        found.append(f"{here}[{i}].value")
                    else:
                        found.extend(find_inline_credentials(env, f"{here}[{i}]"))
            else:
                found.extend(find_inline_credentials(item, here))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(find_inline_credentials(item, f"{path}[{i}]"))
    elif isinstance(value, str) and is_credential(value):
        found.append(path)
    return found


def unstorable_numbers(value: Any, path: str) -> list[str]:
    """Paths under the free-form `value` of numbers JSON or the API server cannot hold (NaN, ±inf, > int64)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in unstorable_numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in unstorable_numbers(v, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 - 1 <= value <= INT64:
        return [path]
    return []


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key (or nodeSelector key), or None."""
    prefix, _, name = key.rpartition("/")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"{key!r} is not a valid label key: the name part must be 1–63 characters of letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return (
            f"{key!r} is not a valid label key: the prefix before '/' must be a DNS subdomain (example.com)"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return (
            f"{value!r} is not a valid label value: at most 63 characters of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


class SecretRef(Model):
    """A Secret in the resource's namespace whose keys become the pod's environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, HF_TOKEN)."""

    name: str = Field(min_length=1, max_length=253)
    """Name of a Secret in the resource's namespace; its keys become environment variables of the workload pods."""


OUTPUT_SCHEMES = ("s3", "pvc", "file")


class Output(Model):
    """Where the workload writes its results."""

    uri: str
    """Destination: s3://bucket/prefix, pvc://claim/path or file:///path (local mode)."""
    secret_ref: SecretRef | None = None
    """Secret with the storage credentials (never written inline)."""

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        return check_uri(uri, OUTPUT_SCHEMES, "output")


class Dependency(Model):
    """An explicit dependency: this resource starts only after that one has Succeeded."""

    kind: Literal["SyntheticDataset", "MaskPretrainJob", "EvalJob"]
    """Kind of the resource waited for."""
    name: str = Field(min_length=1, max_length=253)
    """Name of the resource waited for, in the same namespace."""


class Toleration(Model):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = None
    """Taint key the toleration applies to; empty matches all keys."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists (any value of the taint key) or Equal (the value must match); default: Equal."""
    value: str | None = None
    """Taint value the toleration matches (with operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0, le=INT64)
    """Seconds a pod stays on a node after a NoExecute taint it tolerates appears; default: for ever."""

    @model_validator(mode="after")
    def _as_the_api_server_checks(self) -> Toleration:
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(
                f"tolerationSeconds applies only to effect NoExecute (effect is {self.effect or 'unset'}): "
                "set effect: NoExecute or remove tolerationSeconds"
            )
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists matches any value: remove value, or use operator Equal")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without key must use operator Exists (it matches every taint)")
        if self.key and (problem := label_key_problem(self.key)):
            raise ValueError(f"key {problem}")
        return self


class Resources(Model):
    """Compute resources of each workload container (core/v1 ResourceRequirements)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Resources reserved for each container, as Kubernetes quantities, e.g. {cpu: 4, memory: 16Gi}; default: none."""
    limits: dict[str, Quantity] = Field(default_factory=dict)
    """Most each container may use, as Kubernetes quantities, e.g. {memory: 32Gi}; default: none (a
    MaskPretrainJob adds nvidia.com/gpu from distributed.gpusPerNode)."""

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, values: dict[str, str | int]) -> dict[str, str | int]:
        for name, q in values.items():
            if (
                isinstance(q, bool)
                or (isinstance(q, int) and not 0 <= q <= INT64)
                or not _QUANTITY.match(str(q))
            ):
                raise ValueError(f"{name}: {q!r} is not a quantity (e.g. 500m, 2, 16Gi, 1.5)")
        return values

    @model_validator(mode="after")
    def _extended_resources_need_limits(self) -> Resources:
        for name, q in self.requests.items():
            if name in _NATIVE_RESOURCES or name.startswith("hugepages-"):
                continue
            if name not in self.limits:
                raise ValueError(
                    f"requests.{name} needs limits.{name} too: an extended resource (a GPU) cannot be "
                    "overcommitted, so Kubernetes asks for both, equal (or only the limit)"
                )
            if str(self.limits[name]) != str(q):
                raise ValueError(f"requests.{name} ({q}) must equal limits.{name} ({self.limits[name]})")
        return self


class WorkloadSpec(Model):
    """Fields every freeatm resource has: dependencies, scheduling and Job settings."""

    depends_on: list[Dependency] = Field(default_factory=list)
    """Resources that must have Succeeded before this one starts (beside the implicit dependency of a ref);
    default: none."""
    on_dependency_failure: Literal["Fail", "Wait"] = "Fail"
    """What to do when a dependency Failed: Fail this resource (reason DependencyFailed) or keep Waiting."""
    image: str | None = None
    """Container image of the workload; default: the operator's configured runtime image."""
    resources: Resources | None = None
    """Compute resources of each workload container; default: none requested."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the workload pods must match; default: any node."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the workload pods tolerate; default: none."""
    priority_class_name: str | None = None
    """PriorityClass of the workload pods; default: the cluster's default priority."""
    service_account_name: str | None = None
    """ServiceAccount of the workload pods; default: the chart's runtime ServiceAccount."""
    pod_template: FreeForm | None = None
    """Pod template overrides (metadata and spec), merged over what the operator renders; default: none."""
    queue_name: str | None = None
    """Kueue LocalQueue: set as the kueue.x-k8s.io/queue-name label of the Job; default: none (not queued)."""
    suspend: bool = False
    """Suspend the workload (its Job is suspended; pods are stopped, progress is kept)."""
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Retries of a failed pod before the workload fails (bad input fails at once; evictions don't count)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=INT64)
    """Wall-clock limit of the workload's Job in seconds, after which it fails; default: no limit."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """Seconds after the Job finished before Kubernetes deletes it (not this resource); default: never."""

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, selector: dict[str, str]) -> dict[str, str]:
        for key, value in selector.items():
            if problem := label_key_problem(key) or label_value_problem(value):
                raise ValueError(problem)
        return selector

    @field_validator("queue_name")
    @classmethod
    def _queue_label(cls, queue: str | None) -> str | None:
        if queue is not None and (problem := label_value_problem(queue) or (None if queue else "empty")):
            raise ValueError(f"it becomes the Job's label kueue.x-k8s.io/queue-name: {problem}")
        return queue

    @field_validator("pod_template")
    @classmethod
    def _pod_template(cls, template: dict[str, Any] | None) -> dict[str, Any] | None:
        if bad := unstorable_numbers(template, "podTemplate"):
            raise ValueError(
                f"{', '.join(bad)}: NaN, infinity and integers beyond int64 cannot be stored by the API server"
            )
        spec = (template or {}).get("spec")
        if isinstance(spec, dict) and spec.get("restartPolicy", "Never") != "Never":
            raise ValueError(
                f"spec.restartPolicy {spec['restartPolicy']!r}: workload pods must use Never (the Job retries "
                "failed pods itself, and its podFailurePolicy needs Never)"
            )
        return template

    @model_validator(mode="before")
    @classmethod
    def _no_inline_credentials(cls, data: Any) -> Any:
        paths = find_inline_credentials(data)
        if paths:
            raise ValueError(
                "credentials must not be written into the spec (found at "
                + ", ".join(paths)
                + "); store them in a Secret and reference it with secretRef: {name: ...}"
            )
        return data
