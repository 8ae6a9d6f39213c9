"""The Helm chart in chart/, checked without a cluster: linted and rendered by helm (`make tools`
fetches it), every manifest validated against the Kubernetes 1.29 to 1.33 API schemas, the KEDA
and Prometheus Operator objects against their documented specs, and what a hardened cluster
holds the pods to: Pod Security "restricted", NetworkPolicies, names of at most 63 characters."""

import functools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from distributed import Client
from referencing import Registry, Resource

from tests.conftest import free_port
from tests.test_dockerfile import image_environment

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "chart"
HELM = Path(sys.prefix) / "tools" / "helm"
KUBERNETES_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")
NAMESPACE = "default"  # helm template's

# Helm allows release names of up to 53 characters; the second already holds "worker".
LONG_RELEASE = "staging-eu-west-1-single-cell-compute-back-end-blue-2"
RELEASES = ("test", "worker", "worker-staging-eu-west-1-single-cell-compute-backend", LONG_RELEASE)

QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/staging-queue.fifo"
PROMETHEUS = "http://prometheus-operated.monitoring:9090"
EXTERNAL_SCHEDULER = "tcp://dask-scheduler.dask:8786"
MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
DASK_NAMESPACE = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dask"}}}]
OPS_CONSOLE = [{"podSelector": {"matchLabels": {"app": "ops-console"}}}]
COMPONENTS = {"worker": "worker", "scheduler": "scheduler", "daskWorkers": "dask-worker"}


def placement(component: str) -> dict:
    """Per-component values that are each the component's own, to see where they land."""
    return {
        "nodeSelector": {"pool": component},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": component, "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "zone", "operator": "In", "values": [component]}
                            ]
                        }
                    ]
                }
            }
        },
        "podAnnotations": {"example.com/component": component},
        "extraEnv": [
            {"name": "EXTRA", "value": component},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": component}}},
        ],
        "extraVolumes": [{"name": "extra", "configMap": {"name": component}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "256Mi"},
        },
    }


# Each optional feature on, one at a time (and a few that only make sense together).
OPTIONS: dict[str, dict] = {
    "defaults": {},
    "aws-secret": {"aws": {"existingSecret": "aws-keys"}},
    "metrics": {
        "metrics": {
            "prometheusScrape": True,
            "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        },
        "networkPolicy": {"metricsFrom": MONITORING, "dashboardFrom": OPS_CONSOLE},
    },
    "worker-autoscaling": {"worker": {"autoscaling": {"enabled": True, "queueURL": QUEUE_URL}}},
    "worker-autoscaling-secret": {
        "aws": {"existingSecret": "aws-keys"},
        "worker": {
            "autoscaling": {
                "enabled": True,
                "queueURL": QUEUE_URL,
                "identityOwner": "keda",
                "messagesPerReplica": 8,
                "minReplicas": 0,
            }
        },
    },
    "dask-autoscaling": {
        "daskWorkers": {
            "autoscaling": {
                "enabled": True,
                "prometheusAddress": PROMETHEUS,
                "authenticationRef": "prometheus-auth",
                "authModes": "bearer",
            }
        }
    },
    "external-scheduler": {
        "scheduler": {"enabled": False, "externalAddress": EXTERNAL_SCHEDULER},
        "networkPolicy": {"externalSchedulerFrom": DASK_NAMESPACE},
        "daskWorkers": {
            "autoscaling": {
                "enabled": True,
                "prometheusAddress": PROMETHEUS,
                "query": 'max(dask_scheduler_desired_workers{namespace="dask"})',
            }
        },
    },
    "external-cluster": {
        "scheduler": {"enabled": False, "externalAddress": EXTERNAL_SCHEDULER},
        "daskWorkers": {"enabled": False},
    },
    "no-network-policy": {
        "networkPolicy": {"enabled": False},
        "metrics": {"prometheusScrape": True},
    },
    "placement": {values: placement(component) for values, component in COMPONENTS.items()},
    "platform": {
        "aws": {"accountId": "123456789012"},
        "worker": {
            "redisUrl": "redis://redis.platform:6379/0",
            "apiUrl": "http://api.platform:3000",
        },
        "serviceAccount": {"create": False, "name": "platform-worker"},
        "imagePullSecrets": [{"name": "regcred"}],
        "tmp": {"sizeLimit": "2Gi"},
        "daskWorkers": {
            "localDirectory": {"sizeLimit": "50Gi"},
            "podDisruptionBudget": {"enabled": False},
        },
    },
    "long-names": {"nameOverride": "n" * 63},
}


def merged(*layers: dict) -> dict:
    """Values layered as helm layers -f files: maps merge, anything else is replaced."""
    result: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


# Everything on that fits together: for helm lint --strict.
EVERYTHING = merged(
    OPTIONS["metrics"],
    OPTIONS["worker-autoscaling"],
    OPTIONS["dask-autoscaling"],
    OPTIONS["placement"],
    OPTIONS["platform"],
    OPTIONS["aws-secret"],
)


class Chart:
    """helm on chart/, its renders cached: the same values render the same manifests."""

    def __init__(self, helm: Path):
        self.helm = helm

    def run(self, *args: str, values: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.helm), *args, str(CHART), "--values", "-"],
            input=yaml.safe_dump(values or {}),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def render(self, release: str = "test", values: dict | None = None) -> list[dict]:
        return [json.loads(doc) for doc in self._render(release, json.dumps(values or {}))]

    @functools.cache  # noqa: B019 (one Chart per session)
    def _render(self, release: str, values_json: str) -> tuple[str, ...]:
        result = self.run("template", release, values=json.loads(values_json))
        assert result.returncode == 0, result.stderr
        return tuple(json.dumps(doc) for doc in yaml.safe_load_all(result.stdout) if doc)

    def option(self, name: str, release: str = "test") -> list[dict]:
        return self.render(release, OPTIONS[name])

    def refusal(self, values: dict, command: str = "template") -> str:
        """helm's error for values that must be refused."""
        args = ("template", "test") if command == "template" else ("lint", "--strict")
        result = self.run(*args, values=values)
        assert result.returncode != 0, f"helm {command} accepted {values}"
        return result.stdout + result.stderr


@pytest.fixture(scope="session")
def chart() -> Chart:
    if not HELM.is_file():
        pytest.fail(f"helm is not at {HELM}: run `make tools` (make test does) to fetch it")
    return Chart(HELM)


def find(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [doc for doc in find(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pods(docs: list[dict]) -> dict[str, dict]:
    """Pod templates of the Deployments, by app.kubernetes.io/component."""
    return {
        deployment["spec"]["template"]["metadata"]["labels"][
            "app.kubernetes.io/component"
        ]: deployment["spec"]["template"]
        for deployment in find(docs, "Deployment")
    }


def deployment_of(docs: list[dict], component: str) -> dict:
    for deployment in find(docs, "Deployment"):
        if deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
            component
        ):
            return deployment
    raise AssertionError(f"no Deployment of {component}")


def container(pod: dict) -> dict:
    (only,) = pod["spec"]["containers"]
    return only


def env_of(pod: dict) -> dict[str, str | dict]:
    return {
        variable["name"]: variable.get("value", variable.get("valueFrom"))
        for variable in container(pod).get("env", [])
    }


def selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes' LabelSelector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        value = labels.get(key)
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value is not None and value in expression["values"]:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def test_helm_lint_strict_passes_with_the_defaults_and_with_everything_on(chart):
    for values in ({}, EVERYTHING):
        result = chart.run("lint", "--strict", values=values)
        assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Schemas: Kubernetes' for its own kinds, KEDA's and the Prometheus Operator's documented specs.

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP},
}


def custom_resource(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": OBJECT_META,
            "spec": spec,
        },
    }


def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(required),
    }


INTEGER = {"type": "integer", "minimum": 0}
# KEDA's ScaledObject (keda.sh/v1alpha1), from its specification page: trigger metadata is a
# map of strings (a bare number there is refused by the CRD).
SCALED_OBJECT = custom_resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    closed(
        {
            "scaleTargetRef": closed(
                {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string", "minLength": 1},
                    "envSourceContainerName": {"type": "string"},
                },
                ("name",),
            ),
            "pollingInterval": INTEGER,
            "cooldownPeriod": INTEGER,
            "initialCooldownPeriod": INTEGER,
            "idleReplicaCount": INTEGER,
            "minReplicaCount": INTEGER,
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": closed(
                {"failureThreshold": INTEGER, "replicas": INTEGER, "behavior": {"type": "string"}},
                ("failureThreshold", "replicas"),
            ),
            "advanced": closed(
                {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": closed(
                        {"name": {"type": "string"}, "behavior": {"type": "object"}}
                    ),
                    "scalingModifiers": {"type": "object"},
                }
            ),
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": closed(
                    {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metadata": STRING_MAP,
                        "authenticationRef": closed(
                            {
                                "name": {"type": "string", "minLength": 1},
                                "kind": {
                                    "enum": [
                                        "TriggerAuthentication",
                                        "ClusterTriggerAuthentication",
                                    ]
                                },
                            },
                            ("name",),
                        ),
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                    },
                    ("type", "metadata"),
                ),
            },
        },
        ("scaleTargetRef", "triggers"),
    ),
)
# The trigger parameters from KEDA's aws-sqs-queue and prometheus scaler pages: those required,
# and all that exist (a misspelt one is silently ignored by KEDA).
TRIGGER_PARAMETERS = {
    "aws-sqs-queue": (
        {"awsRegion"},
        {
            "queueURL",
            "queueURLFromEnv",
            "queueLength",
            "activationQueueLength",
            "awsRegion",
            "awsEndpoint",
            "scaleOnInFlight",
            "scaleOnDelayed",
            "identityOwner",
        },
    ),
    "prometheus": (
        {"serverAddress", "query", "threshold"},
        {
            "serverAddress",
            "query",
            "threshold",
            "activationThreshold",
            "namespace",
            "customHeaders",
            "ignoreNullValues",
            "queryParameters",
            "unsafeSsl",
            "authModes",
            "timeout",
        },
    ),
}
TRIGGER_AUTHENTICATION = custom_resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    closed(
        {
            "podIdentity": closed(
                {
                    "provider": {"enum": ["none", "aws", "aws-eks", "azure-workload", "gcp"]},
                    "roleArn": {"type": "string"},
                    "identityOwner": {"enum": ["keda", "workload"]},
                    "identityId": {"type": "string"},
                },
                ("provider",),
            ),
            "secretTargetRef": {
                "type": "array",
                "items": closed(
                    {
                        "parameter": {"type": "string"},
                        "name": {"type": "string"},
                        "key": {"type": "string"},
                    },
                    ("parameter", "name", "key"),
                ),
            },
            "env": {"type": "array"},
            "configMapTargetRef": {"type": "array"},
            "hashiCorpVault": {"type": "object"},
            "awsSecretManager": {"type": "object"},
        }
    ),
)
# The Prometheus Operator's PodMonitor (monitoring.coreos.com/v1), the fields this chart can use.
POD_MONITOR = custom_resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    closed(
        {
            "selector": closed(
                {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}}, ("matchLabels",)
            ),
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": closed(
                    {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "scrapeTimeout": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                    },
                    ("port",),
                ),
            },
        },
        ("selector", "podMetricsEndpoints"),
    ),
)
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
}


def validate_custom_resource(doc: dict) -> None:
    jsonschema.validate(doc, CUSTOM_RESOURCES[doc["apiVersion"], doc["kind"]])
    if doc["kind"] != "ScaledObject":
        return
    for trigger in doc["spec"]["triggers"]:
        required, known = TRIGGER_PARAMETERS[trigger["type"]]
        assert required <= trigger["metadata"].keys(), trigger
        assert trigger["metadata"].keys() <= known, trigger
    behavior = (
        doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    )
    if behavior:
        # KEDA hands this to the HPA it makes: Kubernetes' own schema of it.
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-hpa"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                "maxReplicas": 2,
                "behavior": behavior,
            },
        }
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(hpa, version, strict=True)


@functools.cache
def kubernetes_validator(version: str, api_version: str, kind: str) -> jsonschema.Validator:
    """The strict schema of one kind in one Kubernetes version, from kubernetes-validate's files,
    built once: its validate() parses 1.5 MB of definitions on every call (7 s for this file)."""
    folder = (
        resources.files(kubernetes_validate)
        / "kubernetes-json-schema"
        / f"v{version}.0-local-strict"
    )
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = json.loads((folder / f"{kind.lower()}-{group_version}.json").read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_kubernetes(doc: dict, version: str) -> None:
    kubernetes_validator(version, doc["apiVersion"], doc["kind"]).validate(doc)


def test_the_cached_validator_agrees_with_kubernetes_validate(chart):
    deployment = deployment_of(chart.option("defaults"), "worker")
    for version in KUBERNETES_VERSIONS:
        # The version returned is the schema used: that version's own, not an older one.
        assert kubernetes_validate.validate(deployment, version, strict=True) == version
        validate_kubernetes(deployment, version)
    container(deployment["spec"]["template"])["securityContext"]["readOnlyRootFileSystem"] = True
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(jsonschema.ValidationError):
            kubernetes_validate.validate(deployment, version, strict=True)
        with pytest.raises(jsonschema.ValidationError):
            validate_kubernetes(deployment, version)


def every_render(chart: Chart) -> list[list[dict]]:
    return [chart.option(name) for name in OPTIONS] + [
        chart.option(name, release) for release in RELEASES[1:] for name in ("defaults", "metrics")
    ]


def test_every_manifest_validates_against_kubernetes_1_29_to_1_33(chart):
    documents = {json.dumps(doc, sort_keys=True) for docs in every_render(chart) for doc in docs}
    kinds = set()
    for text in sorted(documents):
        doc = json.loads(text)
        kinds.add(doc["kind"])
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            validate_custom_resource(doc)
            continue
        for version in KUBERNETES_VERSIONS:
            # strict: an unknown field (a typo such as readOnlyRootFileSystem) is an error.
            validate_kubernetes(doc, version)
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
        "PodMonitor",
    } <= kinds


def test_the_custom_resource_checks_refuse_a_misspelt_or_mistyped_parameter(chart):
    scaled_object = one(chart.option("worker-autoscaling"), "ScaledObject")
    scaled_object["spec"]["triggers"][0]["metadata"]["queueLength"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(scaled_object)
    scaled_object["spec"]["triggers"][0]["metadata"]["queueLenght"] = "4"
    del scaled_object["spec"]["triggers"][0]["metadata"]["queueLength"]
    with pytest.raises(AssertionError):
        validate_custom_resource(scaled_object)


# ---------------------------------------------------------------------------------------------
# values.schema.json and the chart's own refusals.

REFUSED = [
    ({"wroker": {"replicas": 2}}, "wroker"),
    ({"worker": {"replica": 2}}, "replica"),
    ({"worker": {"maxInFlight": "four"}}, "maxInFlight"),
    ({"worker": {"terminationGracePeriodSeconds": 20}}, "terminationGracePeriodSeconds"),
    ({"clusterEnv": "development"}, "clusterEnv"),
    ({"tmp": {"sizeLimit": "lots"}}, "sizeLimit"),
    ({"daskWorkers": {"nthreads": 0}}, "nthreads"),
    ({"worker": {"resources": {"limits": {"memory": "2 GB"}}}}, "memory"),
    ({"worker": {"autoscaling": {"identityOwner": "operator"}}}, "identityOwner"),
    ({"scheduler": {"externalAddress": "dask-scheduler:8786"}}, "externalAddress"),
    ({"networkPolicy": {"metricsFrom": [{"namespaceSelecter": {}}]}}, "namespaceSelecter"),
]


@pytest.mark.parametrize(("values", "mentioned"), REFUSED)
def test_values_schema_refuses_typos_and_wrong_types(chart, values, mentioned):
    assert mentioned in chart.refusal(values, "template")
    assert mentioned in chart.refusal(values, "lint")


MISSING = [
    ({"worker": {"autoscaling": {"enabled": True}}}, "worker.autoscaling.queueURL"),
    (
        {"daskWorkers": {"autoscaling": {"enabled": True}}},
        "daskWorkers.autoscaling.prometheusAddress",
    ),
    ({"scheduler": {"enabled": False}, "daskWorkers": {"enabled": False}}, "externalAddress"),
    (
        {"scheduler": {"externalAddress": EXTERNAL_SCHEDULER}},
        "scheduler.externalAddress is for scheduler.enabled=false",
    ),
    (
        {"scheduler": {"enabled": False, "externalAddress": EXTERNAL_SCHEDULER}},
        "networkPolicy.externalSchedulerFrom",
    ),
    (
        merged(
            OPTIONS["external-scheduler"],
            {"daskWorkers": {"autoscaling": {"query": ""}}},
        ),
        "daskWorkers.autoscaling.query",
    ),
    ({"metrics": {"podMonitor": {"enabled": True}}}, "networkPolicy.metricsFrom"),
    ({"metrics": {"prometheusScrape": True}}, "networkPolicy.metricsFrom"),
]


@pytest.mark.parametrize(("values", "message"), MISSING)
def test_settings_that_cannot_work_are_refused_with_what_to_set(chart, values, message):
    assert message in chart.refusal(values)


# ---------------------------------------------------------------------------------------------
# Names, labels and references between objects.

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("option", ["metrics", "long-names"])
def test_names_fit_63_characters_and_stay_distinct(chart, release, option):
    assert len(LONG_RELEASE) == 53
    docs = chart.render(
        release,
        merged(OPTIONS[option], OPTIONS["worker-autoscaling"], OPTIONS["dask-autoscaling"]),
    )
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(names) == len(set(names)), names
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.fullmatch(name), name
        for value in doc["metadata"]["labels"].values():
            assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value
    deployment_names = {doc["metadata"]["name"] for doc in find(docs, "Deployment")}
    assert len(deployment_names) == 3


def selected(selector: dict, templates: dict[str, dict]) -> list[str]:
    """The components whose pod templates a LabelSelector picks."""
    return [
        component
        for component, pod in templates.items()
        if selector_matches(selector, pod["metadata"]["labels"])
    ]


@pytest.mark.parametrize("release", RELEASES)
def test_selectors_and_addresses_point_at_the_right_pods(chart, release):
    docs = chart.render(release, merged(OPTIONS["metrics"], OPTIONS["dask-autoscaling"]))
    templates = pods(docs)
    for deployment in find(docs, "Deployment"):
        component = deployment["spec"]["template"]["metadata"]["labels"][
            "app.kubernetes.io/component"
        ]
        assert selected(deployment["spec"]["selector"], templates) == [component]

    service = one(docs, "Service")
    assert selected({"matchLabels": service["spec"]["selector"]}, templates) == ["scheduler"]
    address = f"tcp://{service['metadata']['name']}:8786"
    assert env_of(templates["worker"])["DASK_SCHEDULER_ADDRESS"] == address
    assert env_of(templates["dask-worker"])["DASK_SCHEDULER_ADDRESS"] == address
    assert container(templates["dask-worker"])["args"][:3] == ["dask", "worker", address]
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == {
        "tcp-comm": 8786,
        "http-dashboard": 8787,
    }

    budget = one(docs, "PodDisruptionBudget")
    assert selected(budget["spec"]["selector"], templates) == ["dask-worker"]
    assert budget["spec"]["maxUnavailable"] == 1

    for pod in templates.values():
        assert pod["spec"]["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# Pod Security "restricted", and a filesystem that only emptyDirs make writable.

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod_spec: dict) -> list[str]:
    """What Pod Security "restricted" (v1.29+) refuses in a pod, plus a writable root."""
    violations = [flag for flag in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(flag)]
    for volume in pod_spec.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            violations.append(f"volume {volume['name']}")
    pod_context = pod_spec.get("securityContext", {})
    for item in pod_spec["containers"] + pod_spec.get("initContainers", []):
        context = item.get("securityContext", {})

        def setting(name: str, context=context):
            return context.get(name, pod_context.get(name))

        capabilities = context.get("capabilities", {})
        checks = {
            "privileged": not context.get("privileged"),
            "allowPrivilegeEscalation": context.get("allowPrivilegeEscalation") is False,
            "capabilities.drop": "ALL" in capabilities.get("drop", []),
            "capabilities.add": set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"},
            "runAsNonRoot": setting("runAsNonRoot") is True,
            "runAsUser": setting("runAsUser") != 0,
            "seccompProfile": (setting("seccompProfile") or {}).get("type")
            in ("RuntimeDefault", "Localhost"),
            "hostPort": not any(port.get("hostPort") for port in item.get("ports", [])),
            "readOnlyRootFilesystem": context.get("readOnlyRootFilesystem") is True,
        }
        violations += [f"{item['name']}: {check}" for check, passed in checks.items() if not passed]
    return violations


def test_restricted_check_finds_what_the_admission_would_refuse(chart):
    pod_spec = pods(chart.option("defaults"))["worker"]["spec"]
    assert restricted_violations(pod_spec) == []
    del pod_spec["securityContext"]["seccompProfile"]
    del container({"spec": pod_spec})["securityContext"]["seccompProfile"]
    container({"spec": pod_spec})["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    pod_spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert restricted_violations(pod_spec) == [
        "volume host",
        "worker: capabilities.add",
        "worker: seccompProfile",
    ]


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_pod_passes_pod_security_restricted(chart, option):
    templates = pods(chart.option(option))
    assert templates
    for component, pod in templates.items():
        assert restricted_violations(pod["spec"]) == [], component


def mounts_by_path(pod: dict) -> dict[str, dict]:
    """The volume behind each mount path of the pod's container."""
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    return {mount["mountPath"]: volumes[mount["name"]] for mount in container(pod)["volumeMounts"]}


def backing_volume(pod: dict, path: str) -> dict:
    """The volume that holds `path` in the container: the one of the deepest mount above it."""
    mounts = mounts_by_path(pod)
    above = [mount for mount in mounts if path == mount or path.startswith(mount.rstrip("/") + "/")]
    assert above, f"{path} is on the read-only root filesystem"
    return mounts[max(above, key=len)]


@pytest.mark.parametrize("option", ["defaults", "placement", "platform"])
def test_every_written_path_is_an_emptydir(chart, option):
    templates = pods(chart.option(option))
    environment = image_environment()
    tmp_limit = merged({"tmp": {"sizeLimit": "1Gi"}}, OPTIONS[option])["tmp"]["sizeLimit"]
    for component, pod in templates.items():
        assert backing_volume(pod, "/tmp")["emptyDir"] == {"sizeLimit": tmp_limit}, component
        for variable in ("HOME", "NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
            assert "emptyDir" in backing_volume(pod, environment[variable]), (component, variable)
    args = container(templates["dask-worker"])["args"]
    local_directory = args[args.index("--local-directory") + 1]
    spill = backing_volume(templates["dask-worker"], local_directory)
    assert spill["name"] != "tmp"
    expected_limit = (
        OPTIONS[option].get("daskWorkers", {}).get("localDirectory", {}).get("sizeLimit")
    )
    assert spill["emptyDir"] == ({"sizeLimit": expected_limit} if expected_limit else {})


# ---------------------------------------------------------------------------------------------
# NetworkPolicies, evaluated as a cluster would for a few pods that try to connect.


def pod_at(namespace: str, **labels: str) -> dict:
    return {"namespace": namespace, "labels": labels}


STRANGER = pod_at(NAMESPACE, app="something-else")
OTHER_RELEASE_WORKER = pod_at(
    NAMESPACE,
    **{
        "app.kubernetes.io/name": "worker",
        "app.kubernetes.io/instance": "other",
        "app.kubernetes.io/component": "worker",
    },
)
PROMETHEUS_POD = pod_at("monitoring", app="prometheus")
OPS_CONSOLE_POD = pod_at(NAMESPACE, app="ops-console")
EXTERNAL_SCHEDULER_POD = pod_at("dask", app="dask-scheduler")
DASK_PORT = 40123  # a Dask worker's or nanny's port, which the OS picks


def peer_admits(peer: dict, source: dict) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": source["namespace"]}
        if not selector_matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif source["namespace"] != NAMESPACE:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], source["labels"])


def admitted(policies: list[dict], target: dict, source: dict, port: int) -> bool:
    """Whether NetworkPolicies let `source` open `port` on the pod template `target`."""
    labels = target["metadata"]["labels"]
    selecting = [
        policy
        for policy in policies
        if selector_matches(policy["spec"]["podSelector"], labels)
        and "Ingress" in policy["spec"]["policyTypes"]
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            if "ports" in rule and port not in [entry["port"] for entry in rule["ports"]]:
                continue
            if "from" not in rule or any(peer_admits(peer, source) for peer in rule["from"]):
                return True
    return False


def sources_of(templates: dict[str, dict]) -> dict[str, dict]:
    return {
        component: pod_at(NAMESPACE, **pod["metadata"]["labels"])
        for component, pod in templates.items()
    } | {
        "stranger": STRANGER,
        "other release": OTHER_RELEASE_WORKER,
        "prometheus": PROMETHEUS_POD,
        "ops console": OPS_CONSOLE_POD,
        "external scheduler": EXTERNAL_SCHEDULER_POD,
    }


def who_reaches(docs: list[dict], component: str, port: int) -> set[str]:
    templates = pods(docs)
    policies = find(docs, "NetworkPolicy")
    return {
        name
        for name, source in sources_of(templates).items()
        if admitted(policies, templates[component], source, port)
    }


def test_only_the_worker_and_the_dask_workers_reach_the_scheduler(chart):
    for option in ("defaults", "metrics"):
        docs = chart.option(option)
        assert who_reaches(docs, "scheduler", 8786) == {"worker", "dask-worker"}
    assert who_reaches(chart.option("defaults"), "scheduler", 8787) == set()
    assert who_reaches(chart.option("metrics"), "scheduler", 8787) == {"prometheus", "ops console"}


def test_the_dask_workers_take_only_the_release_and_its_scheduler(chart):
    defaults = chart.option("defaults")
    release = {"worker", "scheduler", "dask-worker"}
    assert who_reaches(defaults, "dask-worker", DASK_PORT) == release
    assert who_reaches(defaults, "dask-worker", 8790) == release
    metrics = chart.option("metrics")
    assert who_reaches(metrics, "dask-worker", DASK_PORT) == release
    assert who_reaches(metrics, "dask-worker", 8790) == release | {"prometheus"}
    external = chart.option("external-scheduler")
    assert who_reaches(external, "dask-worker", DASK_PORT) == {
        "worker",
        "dask-worker",
        "external scheduler",
    }
    assert not find(external, "Service")


def test_the_worker_takes_only_metrics_scrapes(chart):
    assert who_reaches(chart.option("defaults"), "worker", 8080) == set()
    assert who_reaches(chart.option("metrics"), "worker", 8080) == {"prometheus"}
    assert who_reaches(chart.option("metrics"), "worker", 9999) == set()
    assert not find(chart.option("no-network-policy"), "NetworkPolicy")


# ---------------------------------------------------------------------------------------------
# Probes, ports and environment.

PROBED = {
    "worker": ("/healthz", 8080),
    "scheduler": ("/health", 8787),
    "dask-worker": ("/health", 8790),
}


def test_every_container_has_startup_liveness_and_readiness_probes_on_its_health_port(chart):
    templates = pods(chart.option("defaults"))
    assert templates.keys() == PROBED.keys()
    for component, pod in templates.items():
        ports = {port["name"]: port["containerPort"] for port in container(pod)["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = container(pod)[probe]["httpGet"]
            assert (action["path"], ports[action["port"]]) == PROBED[component], (component, probe)
    args = container(templates["dask-worker"])["args"]
    assert args[args.index("--dashboard-address") + 1] == ":8790"


@pytest.mark.parametrize("grace_period", [30, 60, 300])
def test_the_worker_shutdown_grace_leaves_time_before_the_kill(chart, grace_period):
    docs = chart.render(values={"worker": {"terminationGracePeriodSeconds": grace_period}})
    pod = pods(docs)["worker"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == grace_period
    shutdown_grace = int(env_of(pod)["WORKER_SHUTDOWN_GRACE"])
    assert shutdown_grace == grace_period - 25
    assert 0 < shutdown_grace < grace_period


def test_the_worker_and_the_dask_workers_share_the_release_settings(chart):
    defaults = pods(chart.option("defaults"))
    worker_env, dask_env = env_of(defaults["worker"]), env_of(defaults["dask-worker"])
    assert worker_env["WORKER_REDIS_URL"] == "" and worker_env["WORKER_API_URL"] == ""
    assert "AWS_ACCOUNT_ID" not in worker_env
    shared = {name: value for name, value in worker_env.items() if name != "WORKER_SHUTDOWN_GRACE"}
    assert shared.items() <= dask_env.items()
    assert "envFrom" not in container(defaults["worker"])

    platform = pods(chart.option("platform"))
    for component in ("worker", "dask-worker"):
        env = env_of(platform[component])
        assert env["WORKER_REDIS_URL"] == "redis://redis.platform:6379/0"
        assert env["WORKER_API_URL"] == "http://api.platform:3000"
        assert env["AWS_ACCOUNT_ID"] == "123456789012"
        assert platform[component]["spec"]["serviceAccountName"] == "platform-worker"
        assert platform[component]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert not find(chart.option("platform"), "ServiceAccount")
    assert not find(chart.option("platform"), "PodDisruptionBudget")

    secret = pods(chart.option("aws-secret"))
    for component in ("worker", "dask-worker"):
        assert container(secret[component])["envFrom"] == [{"secretRef": {"name": "aws-keys"}}]
    assert "envFrom" not in container(secret["scheduler"])


def test_an_external_scheduler_replaces_the_charts_own(chart):
    external = chart.option("external-scheduler")
    templates = pods(external)
    assert templates.keys() == {"worker", "dask-worker"}
    assert env_of(templates["worker"])["DASK_SCHEDULER_ADDRESS"] == EXTERNAL_SCHEDULER
    assert container(templates["dask-worker"])["args"][2] == EXTERNAL_SCHEDULER

    cluster = chart.option("external-cluster")
    assert pods(cluster).keys() == {"worker"}
    assert env_of(pods(cluster)["worker"])["DASK_SCHEDULER_ADDRESS"] == EXTERNAL_SCHEDULER
    assert [policy["metadata"]["name"] for policy in find(cluster, "NetworkPolicy")] == [
        "test-worker"
    ]


def test_each_component_gets_its_own_placement_env_and_volumes(chart):
    templates = pods(chart.option("placement"))
    for values_key, component in COMPONENTS.items():
        pod, expected = templates[component], placement(component)
        spec = pod["spec"]
        assert spec["nodeSelector"] == expected["nodeSelector"]
        assert spec["tolerations"] == expected["tolerations"]
        assert spec["affinity"] == expected["affinity"]
        assert pod["metadata"]["annotations"] == expected["podAnnotations"]
        assert {"name": "extra", "configMap": {"name": component}} in spec["volumes"]
        assert mounts_by_path(pod)["/etc/extra"] == {
            "name": "extra",
            "configMap": {"name": component},
        }
        assert container(pod)["resources"] == expected["resources"]
        # Extra variables come last, so that they win over the chart's own.
        assert container(pod)["env"][-2:] == expected["extraEnv"], values_key
    args = container(templates["dask-worker"])["args"]
    assert args[args.index("--memory-limit") + 1] == "256Mi"


# ---------------------------------------------------------------------------------------------
# Metrics and scaling.


def test_the_pod_monitor_scrapes_every_pods_metrics_port(chart):
    docs = chart.option("metrics")
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoint_ports = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    for component, pod in pods(docs).items():
        assert selector_matches(monitor["spec"]["selector"], pod["metadata"]["labels"]), component
        ports = {port["name"]: port["containerPort"] for port in container(pod)["ports"]}
        scraped = {ports[name] for name in endpoint_ports & ports.keys()}
        assert scraped == {PROBED[component][1]}, component
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(PROBED[component][1])
        assert annotations["prometheus.io/path"] == "/metrics"


def scaled_object_of(docs: list[dict], component: str) -> dict:
    deployment = deployment_of(docs, component)
    (scaled,) = [
        doc
        for doc in find(docs, "ScaledObject")
        if doc["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    ]
    return scaled


@pytest.mark.parametrize("option", ["worker-autoscaling", "worker-autoscaling-secret"])
def test_keda_scales_the_worker_on_the_queue_depth(chart, option):
    docs = chart.option(option)
    values = OPTIONS[option]["worker"]["autoscaling"]
    scaled = scaled_object_of(docs, "worker")
    assert "replicas" not in deployment_of(docs, "worker")["spec"]
    assert "replicas" in deployment_of(docs, "dask-worker")["spec"]
    assert scaled["spec"]["minReplicaCount"] == values.get("minReplicas", 1)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"] == {
        "queueURL": QUEUE_URL,
        "queueLength": str(values.get("messagesPerReplica", 4)),
        "awsRegion": "eu-west-1",
        "scaleOnInFlight": "true",
    }
    authentication = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    if "existingSecret" in OPTIONS[option].get("aws", {}):
        assert authentication["spec"] == {
            "secretTargetRef": [
                {"parameter": "awsAccessKeyID", "name": "aws-keys", "key": "AWS_ACCESS_KEY_ID"},
                {
                    "parameter": "awsSecretAccessKey",
                    "name": "aws-keys",
                    "key": "AWS_SECRET_ACCESS_KEY",
                },
            ]
        }
    else:
        assert authentication["spec"] == {
            "podIdentity": {"provider": "aws", "identityOwner": "workload"}
        }


def promql_pod_pattern(query: str) -> re.Pattern:
    """The pod=~"..." matcher of a query; PromQL anchors regexes at both ends."""
    return re.compile(re.search(r'pod=~"([^"]+)"', query)[1])


def test_keda_scales_the_dask_workers_on_the_schedulers_wish(chart):
    docs = chart.option("dask-autoscaling")
    scaled = scaled_object_of(docs, "dask-worker")
    assert "replicas" not in deployment_of(docs, "dask-worker")["spec"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["authenticationRef"] == {"name": "prometheus-auth"}
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == PROMETHEUS
    assert metadata["threshold"] == "1"
    assert metadata["ignoreNullValues"] == "false"
    assert metadata["authModes"] == "bearer"
    query = metadata["query"]
    assert query.startswith("max(dask_scheduler_desired_workers{")
    assert f'namespace="{NAMESPACE}"' in query
    pattern = promql_pod_pattern(query)
    scheduler = deployment_of(docs, "scheduler")["metadata"]["name"]
    dask_workers = deployment_of(docs, "dask-worker")["metadata"]["name"]
    assert pattern.fullmatch(f"{scheduler}-5d8f7c9b4-x2x7k")
    assert not pattern.fullmatch(f"{dask_workers}-6b9c5d7f8-q8w2z")
    assert not pattern.fullmatch(f"{scheduler}-other-5d8f7c9b4-x2x7k")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600

    external = scaled_object_of(chart.option("external-scheduler"), "dask-worker")
    expected = OPTIONS["external-scheduler"]["daskWorkers"]["autoscaling"]["query"]
    assert external["spec"]["triggers"][0]["metadata"]["query"] == expected


def test_notes_say_how_to_reach_the_dashboard_health_and_logs(chart):
    result = chart.run("install", "staging", "--dry-run=client", values={})
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "port-forward service/staging-worker-scheduler 8787" in notes
    assert "port-forward deployment/staging-worker 8080" in notes
    assert "curl -i http://localhost:8080/healthz" in notes
    assert "logs deployment/staging-worker " in notes
    assert "app.kubernetes.io/component=dask-worker" in notes

    result = chart.run("install", "staging", "--dry-run=client", values=OPTIONS["external-cluster"])
    notes = result.stdout.split("NOTES:", 1)[1]
    assert EXTERNAL_SCHEDULER in notes
    assert "scheduler 8787" not in notes and "dask-worker" not in notes


# ---------------------------------------------------------------------------------------------
# The rendered Dask commands, run for real on loopback.


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def wait_for(url: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        status, body = get(url)
        if status == 200:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 in time")


@pytest.mark.distributed
@pytest.mark.slow
def test_the_rendered_dask_commands_serve_their_probes_and_the_scaling_metric(chart, tmp_path):
    """The scheduler's and Dask workers' args as rendered (ports and directory moved to loopback
    and tmp_path): the flags exist, the probes' paths answer on the dashboard ports, the worker
    is named after its pod, and the scheduler publishes the metric KEDA's query reads."""
    docs = chart.option("dask-autoscaling")
    templates = pods(docs)
    scheduler_port, scheduler_dashboard, worker_dashboard = free_port(), free_port(), free_port()
    address = f"tcp://127.0.0.1:{scheduler_port}"
    pod_name = "test-worker-dask-workers-6b9c5d7f8-q8w2z"
    replacements = {
        "8786": str(scheduler_port),
        ":8787": f"127.0.0.1:{scheduler_dashboard}",
        ":8790": f"127.0.0.1:{worker_dashboard}",
        "/var/lib/dask-worker": str(tmp_path / "local"),
        "$(POD_NAME)": pod_name,
        container(templates["dask-worker"])["args"][2]: address,
    }
    commands = [
        [replacements.get(arg, arg) for arg in container(templates[component])["args"]]
        + ["--host", "127.0.0.1"]
        for component in ("scheduler", "dask-worker")
    ]
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("DASK_")
    }
    processes = []
    try:
        for index, command in enumerate(commands):
            assert command[0] == "dask"
            with open(tmp_path / f"{index}.log", "w") as log:
                processes.append(
                    subprocess.Popen(
                        [str(Path(sys.executable).with_name("dask")), *command[1:]],
                        cwd=tmp_path,
                        env=environment,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 60
        for component, port in (
            ("scheduler", scheduler_dashboard),
            ("dask-worker", worker_dashboard),
        ):
            probe = container(templates[component])["livenessProbe"]["httpGet"]["path"]
            assert wait_for(f"http://127.0.0.1:{port}{probe}", deadline) == "ok"
        assert "dask_worker_" in wait_for(f"http://127.0.0.1:{worker_dashboard}/metrics", deadline)

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=30)
            names = [worker["name"] for worker in client.scheduler_info()["workers"].values()]
        assert names == [pod_name]

        query = scaled_object_of(docs, "dask-worker")["spec"]["triggers"][0]["metadata"]["query"]
        metric = re.search(r"\((\w+)\{", query)[1]
        metrics = wait_for(f"http://127.0.0.1:{scheduler_dashboard}/metrics", deadline)
        assert re.search(rf"^{metric} [0-9.]+$", metrics, re.MULTILINE), metric
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
