"""Hostile and malformed requests: each is answered with an error naming the field, moved to the
dead-letter queue, or answered correctly; never an unexpected exception, a hang, a traceback
outside development, or a read outside the experiment's own prefix."""

import re
import time

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import make_request, make_settings, result_body
from tests.test_loop import write_gene_table_store
from worker.errors import InvalidRequest, PoisonMessage, UnknownTask
from worker.jsonio import dumps
from worker.local.aws_proxy import AwsProxy
from worker.settings import load_settings
from worker.store.experiment import forget_manifest
from worker.store.locations import new_version_name, publish_version
from worker.tasks import TASKS
from worker.tasks.base import TaskContext
from worker.tasks.dispatch import Inline, run_task, validated
from worker.tasks.list_genes import GENE_FIELDS, GeneTable
from worker.transport.protocol import Request, parse_message
from worker.transport.seed import MAX_MESSAGE_BYTES, SeedProtocol

HUGE = 987654321987
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTILE_STRINGS = [
    "", " ", "..", "../other", "a/../b", "a/b", "/abs", "%2f", "a%2Fb", "e1\n", "e1\x00",
    "e1 ", "-e1", "_e1", "a" * 129, "a" * 100_000, "é1", "ｅ1", "e1\u202e", "*", "%", "_",
    "\\", ".*", "(a+)+$", "[", "'; DROP TABLE genes; --", "${jndi:ldap://x}", "s3://bucket/key",
    "biomage-source-test/../secret", "biomage-source-test/x", "NaN", "Infinity",
]  # fmt: skip
HOSTILE_NUMBERS = [-1, 0, 2**31, 2**63, 2**64 + 1, 10**30, -(10**30), 1e308, 0.5, -0.0]
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = (
    st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=30)
    | st.sampled_from(HOSTILE_STRINGS) | st.sampled_from(HOSTILE_NUMBERS)
)  # fmt: skip
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


SEED = SeedProtocol(load_settings({"CLUSTER_ENV": "test"}))


def parse_request(text: str) -> Request:
    """The request as the loop parses it; PoisonMessage when nobody can be answered."""
    return parse_message(text, [SEED])[1]


def envelope(**fields) -> dict:
    return {
        "uuid": "u-1",
        "socketId": "socket-1",
        "experimentId": "e1",
        "timeout": "2099-12-31 00:00:00",
        "body": {"name": "ListGenes"},
        **fields,
    }


def assert_parses_or_poison(text: str) -> None:
    try:
        request = parse_request(text)
    except PoisonMessage:
        return
    if request.invalid is not None:
        assert request.invalid.message.startswith("invalid request: ")
        assert len(request.invalid.message) < 4000
    else:
        assert request.body is not None and request.timeout is not None


@FEW
@given(
    field=st.sampled_from(["uuid", "socketId", "experimentId", "timeout", "body", "extra"]),
    value=JSON_VALUES,
)
def test_any_envelope_field_value_is_parsed_rejected_or_poison(field, value):
    try:
        text = dumps(envelope(**{field: value})).decode()
    except TypeError:  # nested deeper than JSON text can be written
        return
    assert_parses_or_poison(text)


@FEW
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_is_parsed_or_poison(text):
    assert_parses_or_poison(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 2000 + "]" * 2000,  # deeper than the JSON parser allows
        '{"uuid": "u", "socketId": "s", "body": NaN}',
        '{"uuid": "u", "socketId": "s", "timeout": Infinity}',
        "x" * (300 * 1024),
        dumps({"socketId": "s", "body": {"name": "ListGenes"}}).decode(),
        dumps({"uuid": "", "socketId": "s"}).decode(),
        dumps({"uuid": "u"}).decode(),
    ],
    ids=["deep", "nan", "infinity", "huge", "no-uuid", "empty-uuid", "no-socket"],
)
def test_unanswerable_messages_are_poison(text):
    with pytest.raises(PoisonMessage):
        parse_request(text)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        (
            dumps(envelope(body={"name": "ListGenes", "x": [[[[]]]]}))
            .decode()
            .replace("[[[[]]]]", "[" * 300 + "]" * 300),
            "cannot be echoed",
        ),
        (dumps(envelope(socketId="x" * 200_000)).decode(), "at most 131072 bytes"),
        (
            dumps(envelope(body={"name": "GeneExpression", "genes": ['"'] * 40_000})).decode(),
            "at most 131072 bytes",
        ),
        (
            dumps(envelope(body={"name": "GeneExpression", "genes": ["G"] * 70_000})).decode(),
            f"limited to {MAX_MESSAGE_BYTES} bytes",
        ),
    ],
    ids=["deep-echo", "long-socket", "escapes-double", "over-256-KiB"],
)
def test_requests_too_large_to_echo_are_answered_naming_the_limit(text, limit):
    """A well-formed request the response cannot echo under SNS's 256 KiB is answered with an
    InvalidRequest naming the limit, echoing only its envelope and the task's name."""
    request = parse_request(text)
    assert request.invalid is not None and limit in request.invalid.message
    raw = dumps(request.raw)
    assert len(raw) < 2000
    assert request.raw["uuid"] == "u-1" and request.raw["body"]["name"] in text


@pytest.mark.parametrize("timeout", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"])
def test_extreme_timeouts_are_compared_without_error(timeout):
    request = parse_request(dumps(envelope(timeout=timeout)).decode())
    assert request.expired() is timeout.startswith("0001")


def s3_paths_read(proxy: AwsProxy, settings, experiment_id: str) -> list[str]:
    """Every S3 path the tasks request, through the proxy, while running each store-reading
    task for `experiment_id` (in this process)."""
    context = TaskContext.for_experiment(settings, experiment_id)
    # This process may hold the manifest from an earlier example: read it again.
    forget_manifest(settings.store_root, experiment_id)
    proxy.forget()
    for body in [
        {"name": "ListGenes", "limit": 1},
        {"name": "GeneExpression", "genes": ["CST3"], "cellSets": ["louvain-0"]},
        {"name": "ClusterCells", "type": "louvain", "cellSetKey": "k", "cellSetName": "K"},
    ]:
        task, validated_body = validated(TASKS, body)
        run_task(task, validated_body, context, Inline(), shows_tracebacks=False)
    return [request.key for request in proxy.requests_of("s3")]


@pytest.fixture(scope="module")
def recording_proxy(emulator):
    proxy = AwsProxy(emulator.url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def proxied_settings(recording_proxy):
    return make_settings(recording_proxy.url)


def assert_inside(paths: list[str], settings, experiment_id: str) -> None:
    store_prefix = f"/{settings.processed_bucket}/{experiment_id}/"
    cell_sets_key = f"/{settings.cell_sets_bucket}/{experiment_id}"
    for path in paths:
        assert path.startswith(store_prefix) or path == cell_sets_key, path


EXPERIMENT_IDS = st.text(
    alphabet=st.sampled_from("aZ09_-./%\\\n\x00é ~:?#"), min_size=1, max_size=12
) | st.sampled_from(HOSTILE_STRINGS)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(experiment_id=EXPERIMENT_IDS)
def test_experiment_id_is_rejected_or_reads_only_its_own_prefix(
    experiment_id, recording_proxy, proxied_settings
):
    request = parse_request(dumps(envelope(experimentId=experiment_id)).decode())
    if request.invalid is not None:
        assert "experimentId" in request.invalid.message
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", experiment_id)
    paths = s3_paths_read(recording_proxy, proxied_settings, experiment_id)
    assert paths
    assert_inside(paths, proxied_settings, experiment_id)


def test_prepared_experiment_reads_stay_inside_its_prefix(recording_proxy, proxied_settings):
    """The same property on an experiment that exists, so the reads go past the manifest."""
    write_gene_table_store(proxied_settings, "hostile-prefix")
    paths = s3_paths_read(recording_proxy, proxied_settings, "hostile-prefix")
    # A version was opened, not only the manifest.
    assert any(
        path.startswith(f"/{proxied_settings.processed_bucket}/hostile-prefix/v") for path in paths
    )
    assert_inside(paths, proxied_settings, "hostile-prefix")


def task_bodies(task_name: str):
    fields = [name for name in TASKS[task_name].body.model_fields if name != "name"]
    return st.fixed_dictionaries(
        {"name": st.just(task_name)},
        optional={field: JSON_VALUES for field in [*fields, "surprise"]},
    )


@FEW
@given(body=st.sampled_from(sorted(TASKS)).flatmap(task_bodies))
def test_any_task_body_is_validated_or_rejected_naming_the_field(body):
    try:
        _, validated_body = validated(TASKS, body)
    except InvalidRequest as error:
        assert re.match(r"invalid request: body\.\w+", error.message), error.message
        assert len(error.message) < 4000
        return
    for value in validated_body.model_dump().values():
        assert not (isinstance(value, float) and value != value)  # no NaN gets through
        assert not isinstance(value, float) or abs(value) < 1e6


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ListGenes", "limit": 100_001}, "body.limit"),
        ({"name": "ListGenes", "limit": True}, "body.limit"),
        ({"name": "ListGenes", "limit": "5"}, "body.limit"),
        ({"name": "ListGenes", "offset": 10**9 + 1}, "body.offset"),
        ({"name": "ListGenes", "geneNamesFilter": "%" * 1001}, "body.geneNamesFilter"),
        ({"name": "GeneExpression", "genes": ["G"] * 1001}, "body.genes"),
        ({"name": "GeneExpression", "genes": []}, "body.genes"),
        ({"name": "GeneExpression", "genes": ["G" * 201]}, "body.genes.0"),
        ({"name": "GeneExpression", "genes": ["G"], "cellSets": ["c"] * 1001}, "body.cellSets"),
        ({"name": "DifferentialExpression", "cellSet": "a", "compareWith": "rest",
          "maxNum": 100_001}, "body.maxNum"),
        ({"name": "MarkerHeatmap", "nGenes": 101}, "body.nGenes"),
        ({"name": "MarkerHeatmap", "maxCells": 100_001}, "body.maxCells"),
        ({"name": "MarkerHeatmap", "maxCells": 0}, "body.maxCells"),
        ({"name": "ClusterCells", "type": "louvain", "cellSetKey": "../x", "cellSetName": "x"},
         "body.cellSetKey"),
        ({"name": "ClusterCells", "type": "louvain", "cellSetKey": "k", "cellSetName": "x",
          "config": {"resolution": float("nan")}}, "body.config.resolution"),
        ({"name": "GetEmbedding", "type": "tsne", "config": {"perplexity": float("inf")}},
         "body.config.perplexity"),
        ({"name": "PrepareExperiment", "sourceBucket": "biomage-source-test/../x",
          "sourceMatrixPath": "a"}, "body.sourceBucket"),
        ({"name": "PrepareExperiment", "sourceBucket": "biomage-source-test",
          "sourceMatrixPath": "a/../../other-experiment"}, "body.sourceMatrixPath"),
        ({"name": "PrepareExperiment", "sourceBucket": "biomage-source-test",
          "sourceMatrixPath": "/etc/passwd"}, "body.sourceMatrixPath"),
        ({"name": "PrepareExperiment", "sourceBucket": "biomage-source-test",
          "sourceMatrixPath": "a%2f..%2fb"}, "body.sourceMatrixPath"),
    ],
)  # fmt: skip
def test_request_size_limits_and_paths_are_enforced(body, field):
    with pytest.raises(InvalidRequest, match=re.escape(field)):
        validated(TASKS, body)


def test_unknown_task_name_is_cut_in_the_message():
    with pytest.raises(UnknownTask) as raised:
        validated(TASKS, {"name": "x" * 100_000})
    assert len(raised.value.message) < 1000


def like_reference(pattern: str, name: str) -> bool:
    """SQL LIKE, case-insensitive, by dynamic programming: an oracle free of regexes."""
    pattern, name = pattern.lower(), name.lower()
    matches = [True] + [False] * len(name)
    for char in pattern:
        if char == "%":
            matches = [any(matches[: i + 1]) for i in range(len(name) + 1)]
        else:
            matches = [False] + [
                matches[i] and (char == "_" or char == name[i]) for i in range(len(name))
            ]
    return matches[-1]


LIKE_ALPHABET = "aBİ%_\\.*+?()[]{}^$|-'"


@settings(max_examples=60, deadline=None)
@example(pattern="\n", names=["", ""])
@example(pattern="a%", names=["a\nb", "ab", "ba"])
@given(
    pattern=st.text(st.sampled_from(LIKE_ALPHABET + "\n"), max_size=8),
    names=st.lists(
        st.text(st.sampled_from(LIKE_ALPHABET + "\n"), max_size=6), min_size=1, max_size=6
    ),
)
def test_gene_names_filter_is_like_not_regex(pattern, names):
    genes = pd.DataFrame({field: names for field in GENE_FIELDS})
    expected = [like_reference(pattern, name) for name in names]
    assert GeneTable(genes).matching(pattern).tolist() == expected


def dead_letters(running, wanted: set[str], timeout_s: float = 30) -> set[str]:
    url = running.sqs.get_queue_url(QueueName=running.settings.dead_letter_queue)["QueueUrl"]
    found: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not wanted <= found and time.monotonic() < deadline:
        reply = running.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in reply.get("Messages", []):
            found.add(message["Body"])
            running.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


@pytest.mark.timeout(180)
def test_hostile_requests_through_the_queue(session_worker, session_settings):
    """Through SQS, the loop and SNS: errors name the field and carry no traceback outside
    development; poison goes to the dead-letter queue; LIKE patterns answer correctly; the
    worker goes on answering."""
    var = write_gene_table_store(session_settings, "hostile-genes")
    broken = "hostile-broken"
    publish_version(
        session_settings.store_root, broken, new_version_name(), session_settings.aws, {}
    )  # a manifest pointing at a version that was never written
    invalid = [
        (make_request({"name": "ListGenes"}, experiment_id="a/../b"), "experimentId"),
        (make_request({"name": "ListGenes"}, experiment_id="e1\n"), "experimentId"),
        (make_request({"name": "ListGenes", "limit": HUGE}, "e1"), "body.limit"),
        (make_request({"name": "ListGenes", "limit": "5"}, "e1"), "body.limit"),
        (make_request({"name": "GeneExpression", "genes": ["G"] * 5000}, "e1"), "body.genes"),
        (make_request({"name": "MarkerHeatmap", "maxCells": -1}, "e1"), "body.maxCells"),
        (make_request({"name": "ListGenes", "x": "[" * 200 + "]" * 200}, "e1"), "body.x"),
        (make_request({"name": {"nested": ["name"]}}, "e1"), "body.name"),
        (make_request({"name": "ListGenes"}, "e1", timeout="not a time"), "timeout"),
    ]
    filters = ["%.%", "G1_.A", "g1%", "%\\%", "(G1)", "G1.*", "%[AB]", "%A"]
    answered = [
        make_request({"name": "ListGenes", "geneNamesFilter": pattern, "limit": 0},
                     experiment_id="hostile-genes")
        for pattern in filters
    ]  # fmt: skip
    failing = make_request({"name": "ListGenes"}, experiment_id=broken)
    poison = ["not json", dumps({"socketId": "s", "body": {}}).decode()]
    too_large = make_request({"name": "GeneExpression", "genes": ["G" * 100] * 3000}, "e1")
    for request, _ in invalid:
        # JSON has integers beyond 64 bits; the encoder does not: written as text.
        session_worker.send(dumps(request).decode().replace(str(HUGE), "1" + "0" * 30))
    for request in [*answered, failing]:
        session_worker.send(request)
    for text in poison:
        session_worker.send(text)
    session_worker.send(too_large)

    for request, field in invalid:
        response = session_worker.response(request["uuid"], timeout_s=60)
        assert response["request"] == {**request, "body": response["request"]["body"]}
        assert response["response"] == {"cacheable": False, "error": True}
        error = result_body(response, session_settings)["error"]
        assert error["code"] == "InvalidRequest" and field in error["message"], error
        assert "traceback" not in error
    for pattern, request in zip(filters, answered, strict=True):
        body = result_body(session_worker.response(request["uuid"], timeout_s=60), session_settings)
        expected = sum(like_reference(pattern, name) for name in var["gene_names"])
        assert body == {"rows": [], "total": expected}, pattern
    error = result_body(session_worker.response(failing["uuid"], timeout_s=60), session_settings)
    assert error["error"]["code"] == "TaskFailed" and "traceback" not in error["error"]
    response = session_worker.response(too_large["uuid"], timeout_s=60)
    assert response["request"] == {**too_large, "body": {"name": "GeneExpression"}}
    error = result_body(response, session_settings)["error"]
    assert error["code"] == "InvalidRequest" and "limited to 262144 bytes" in error["message"]
    assert set(poison) <= dead_letters(session_worker, set(poison))
