"""The embedded ClickHouse endpoint, driven through clickhouse-connect as production drives it."""

from __future__ import annotations

import gzip
import http.client
import json
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import numpy as np
import pandas as pd
import psutil
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from anomaly.config import ROOT
from anomaly.endpoint import (
    PARENT_POLL_SECONDS,
    EmbeddedEndpoint,
    GuestLease,
    ensure_endpoint,
    running_endpoint,
    serve,
    state_file,
)
from anomaly.errors import EndpointError

ROWS_PER_INSERT = 1000
INSERTS_PER_PROCESS = 8
PROCESSES = 4


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEndpoint]:
    """One endpoint for the module: starting one costs about a second."""
    served = EmbeddedEndpoint()
    served.start(tmp_path_factory.mktemp("endpoint") / "chdb", timeout=60)
    yield served
    served.stop()


def connect(endpoint: EmbeddedEndpoint, **options: Any) -> clickhouse_connect.driver.Client:
    """A client configured the way the engines configure theirs."""
    settings: dict[str, Any] = {"compress": False, "autogenerate_session_id": False}
    settings.update(options)
    return clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, **settings)


@pytest.fixture(scope="module")
def client(endpoint: EmbeddedEndpoint) -> Iterator[clickhouse_connect.driver.Client]:
    made = connect(endpoint)
    yield made
    made.close()


def exchange(
    endpoint: EmbeddedEndpoint,
    method: str,
    params: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One raw HTTP exchange, for what a ClickHouse client library does not show."""
    target = path + ("?" + urllib.parse.urlencode(params) if params else "")
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_ping_and_root_answer_ok_like_clickhouse(endpoint: EmbeddedEndpoint) -> None:
    assert exchange(endpoint, "GET", path="/ping")[2] == b"Ok.\n"
    assert exchange(endpoint, "GET")[2] == b"Ok.\n"
    assert endpoint.alive()


@pytest.fixture(scope="module")
def events(client: clickhouse_connect.driver.Client) -> str:
    """A two-row table, made with command() and insert() as the engines make theirs."""
    client.command(
        "CREATE TABLE events (id UInt32, name String, ts DateTime) ENGINE = MergeTree ORDER BY id"
    )
    client.insert(
        "events",
        [[1, "a", datetime(2024, 1, 1, 0, 0)], [2, "b", datetime(2024, 1, 1, 0, 5)]],
        column_names=["id", "name", "ts"],
    )
    return "events"


def test_query_df_binds_typed_parameters(
    client: clickhouse_connect.driver.Client, events: str
) -> None:
    frame = client.query_df(
        "SELECT id, name, ts FROM events WHERE id >= {x:UInt32} AND name = {s:String} "
        "AND ts >= {t:DateTime}",
        parameters={"x": 2, "s": "b", "t": datetime(2024, 1, 1, 0, 1)},
    )

    assert frame["id"].tolist() == [2]
    assert frame["name"].tolist() == ["b"]
    assert frame["ts"].iloc[0] == pd.Timestamp("2024-01-01 00:05:00")


def test_string_parameter_is_bound_as_data_not_sql(
    client: clickhouse_connect.driver.Client, events: str
) -> None:
    hostile = "x'); DROP TABLE events; -- \\' \"q\" ;\ttab"

    echoed = client.query("SELECT {s:String}", parameters={"s": hostile}).result_rows
    matches = client.command(
        "SELECT count() FROM events WHERE name = {s:String}", parameters={"s": hostile}
    )

    assert echoed == [(hostile,)]
    assert matches == 0
    assert client.command("SELECT count() FROM events") == 2


def test_multi_statement_request_is_refused(
    client: clickhouse_connect.driver.Client, events: str
) -> None:
    with pytest.raises(DatabaseError) as raised:
        client.command("SELECT 1; DROP TABLE events")

    assert raised.value.code == 62
    assert "Multi-statements" in str(raised.value)
    assert client.command("EXISTS TABLE events") == 1


def test_insert_df_of_a_million_rows_arrives_whole(
    client: clickhouse_connect.driver.Client,
) -> None:
    rows = 1_000_000
    client.command(
        "CREATE TABLE points (customer UInt16, minute DateTime, value Float64, tag String) "
        "ENGINE = MergeTree ORDER BY (customer, minute)"
    )
    frame = pd.DataFrame(
        {
            "customer": (np.arange(rows) % 20).astype("uint16"),
            "minute": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(rows), unit="min"),
            "value": np.arange(rows, dtype="float64"),
            "tag": np.where(np.arange(rows) % 2 == 0, "even", "odd"),
        }
    )

    summary = client.insert_df("points", frame)
    count, total, odd = client.query(
        "SELECT count(), sum(value), countIf(tag = 'odd') FROM points"
    ).result_rows[0]

    assert summary.written_rows == rows
    assert count == rows
    assert total == float(rows * (rows - 1) // 2)
    assert odd == rows // 2


def test_error_keeps_clickhouse_code_and_message(
    endpoint: EmbeddedEndpoint, client: clickhouse_connect.driver.Client
) -> None:
    with pytest.raises(DatabaseError) as raised:
        client.query("SELECT * FROM no_such_table")
    status, headers, body = exchange(endpoint, "POST", body=b"SELECT * FROM no_such_table")

    assert raised.value.code == 60
    assert "UNKNOWN_TABLE" in str(raised.value)
    assert status == 404  # ClickHouse answers unknown tables with 404
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception: ")


def _insert_and_query(url: str, worker: int) -> int:
    """In a spawned process: insert known rows in several requests while querying between."""
    parsed = urllib.parse.urlparse(url)
    client = clickhouse_connect.get_client(
        host=parsed.hostname, port=parsed.port, compress=False, autogenerate_session_id=False
    )
    seen: object = 0
    for batch in range(INSERTS_PER_PROCESS):
        start = batch * ROWS_PER_INSERT
        client.insert_df(
            "concurrent",
            pd.DataFrame(
                {
                    "worker": np.full(ROWS_PER_INSERT, worker, dtype="uint8"),
                    "seq": np.arange(start, start + ROWS_PER_INSERT, dtype="uint32"),
                }
            ),
        )
        seen = client.command(
            "SELECT count() FROM concurrent WHERE worker = {w:UInt8}", parameters={"w": worker}
        )
    client.close()
    return int(str(seen))


def test_processes_inserting_and_querying_at_once_lose_no_row(
    endpoint: EmbeddedEndpoint, client: clickhouse_connect.driver.Client
) -> None:
    client.command(
        "CREATE TABLE concurrent (worker UInt8, seq UInt32) "
        "ENGINE = MergeTree ORDER BY (worker, seq)"
    )
    expected = INSERTS_PER_PROCESS * ROWS_PER_INSERT

    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        seen = pool.starmap(_insert_and_query, [(endpoint.url, w) for w in range(PROCESSES)])
    per_worker = client.query(
        "SELECT worker, count(), uniqExact(seq) FROM concurrent GROUP BY worker ORDER BY worker"
    ).result_rows

    assert seen == [expected] * PROCESSES
    assert per_worker == [(w, expected, expected) for w in range(PROCESSES)]


def test_settings_reach_only_the_query_that_sends_them(
    client: clickhouse_connect.driver.Client,
) -> None:
    probe = (
        "SELECT getSetting('max_threads'), getSetting('max_execution_time'), "
        "getSetting('max_memory_usage')"
    )

    limited = client.query(
        probe,
        settings={"max_threads": 7, "max_execution_time": 9, "max_memory_usage": 123456789},
    ).result_rows[0]
    plain = client.query(probe).result_rows[0]

    assert [int(value) for value in limited] == [7, 9, 123456789]
    assert int(plain[0]) != 7 and int(plain[2]) != 123456789


def test_max_memory_usage_is_enforced(client: clickhouse_connect.driver.Client) -> None:
    with pytest.raises(DatabaseError) as raised:
        client.query(
            "SELECT groupArray(number) FROM numbers(5000000)",
            settings={"max_memory_usage": 10_000_000},
        )

    assert raised.value.code == 241  # MEMORY_LIMIT_EXCEEDED


def test_database_and_default_format_parameters(
    endpoint: EmbeddedEndpoint, client: clickhouse_connect.driver.Client
) -> None:
    client.command("CREATE DATABASE IF NOT EXISTS other")
    client.command("CREATE TABLE other.only_here (x UInt8) ENGINE = Memory")
    client.command("INSERT INTO other.only_here VALUES (42)")

    scoped = connect(endpoint, database="other")
    found = scoped.command("SELECT x FROM only_here")
    scoped.close()
    status, headers, body = exchange(
        endpoint, "GET", {"query": "SELECT 1 AS x", "default_format": "JSONEachRow"}
    )

    assert found == 42
    assert client.command("SELECT currentDatabase()") == "default"
    assert status == 200
    assert json.loads(body) == {"x": 1}
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"


def test_response_headers_are_those_of_a_server(endpoint: EmbeddedEndpoint) -> None:
    status, headers, body = exchange(
        endpoint, "GET", {"query": "SELECT number FROM numbers(3)", "query_id": "probe-1"}
    )
    summary = json.loads(headers["X-ClickHouse-Summary"])

    assert (status, body) == (200, b"0\n1\n2\n")  # TabSeparated when no format is named
    assert headers["X-ClickHouse-Query-Id"] == "probe-1"
    assert headers["X-ClickHouse-Timezone"] == "UTC"
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Server-Display-Name"]
    assert headers["Content-Type"].startswith("text/tab-separated-values")
    assert summary["read_rows"] == "3"


def test_get_request_cannot_change_data(
    endpoint: EmbeddedEndpoint, client: clickhouse_connect.driver.Client
) -> None:
    status, headers, _ = exchange(
        endpoint, "GET", {"query": "CREATE TABLE by_get (x UInt8) ENGINE = Memory"}
    )

    assert headers["X-ClickHouse-Exception-Code"] == "164"  # READONLY
    assert status == 500
    assert client.command("EXISTS TABLE by_get") == 0
    assert client.command("SELECT getSetting('readonly')") == 0  # not left on a connection


def test_insert_statement_split_across_chunks_streams(
    endpoint: EmbeddedEndpoint, client: clickhouse_connect.driver.Client
) -> None:
    client.command("CREATE TABLE chunked (x UInt32, s String) ENGINE = Memory")
    pieces = [b"INSERT INTO chunked (x, s) FOR", b"MAT CSV\n1,", b"one\n2,two\n", b"3,three\n"]

    status, _, body = exchange(endpoint, "POST", body=iter(pieces))  # chunked transfer encoding
    via_param, _, _ = exchange(
        endpoint, "POST", {"query": "INSERT INTO chunked FORMAT CSV"}, body=b"4,four\n"
    )

    assert (status, body) == (200, b"")
    assert via_param == 200
    assert client.query("SELECT x, s FROM chunked ORDER BY x").result_rows == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
    ]


def test_compressed_request_bodies_are_decoded_or_refused_by_name(
    endpoint: EmbeddedEndpoint,
) -> None:
    lz4_client = connect(endpoint, compress=True)  # clickhouse-connect's default: lz4 bodies
    lz4_client.command("CREATE TABLE packed (x UInt32) ENGINE = MergeTree ORDER BY x")
    lz4_client.insert_df("packed", pd.DataFrame({"x": np.arange(50_000, dtype="uint32")}))
    gzipped = gzip.compress(b"INSERT INTO packed FORMAT CSV\n50000\n50001\n")
    gzip_status, _, _ = exchange(
        endpoint, "POST", body=gzipped, headers={"Content-Encoding": "gzip"}
    )
    snappy_status, snappy_headers, snappy_body = exchange(
        endpoint, "POST", body=b"SELECT 1", headers={"Content-Encoding": "snappy"}
    )
    _, broken_headers, _ = exchange(
        endpoint, "POST", body=gzipped[:-12], headers={"Content-Encoding": "gzip"}
    )

    assert gzip_status == 200
    assert lz4_client.query("SELECT count(), max(x) FROM packed").result_rows == [(50002, 50001)]
    assert snappy_status == 500
    assert snappy_headers["X-ClickHouse-Exception-Code"] == "89"
    assert b"'snappy'" in snappy_body
    assert broken_headers["X-ClickHouse-Exception-Code"] == "271"  # CANNOT_DECOMPRESS
    lz4_client.close()


def test_listens_on_loopback_only(endpoint: EmbeddedEndpoint, tmp_path: Path) -> None:
    assert endpoint.pid is not None
    listening = [
        connection.laddr
        for connection in psutil.Process(endpoint.pid).net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]

    assert listening and all(address.ip == "127.0.0.1" for address in listening)
    for host in ("0.0.0.0", "192.168.1.10", "example.org"):
        with pytest.raises(EndpointError, match=host.replace(".", r"\.")):
            serve(tmp_path / "never", host=host)
    assert not (tmp_path / "never").exists()


def test_a_taken_port_fails_naming_it(endpoint: EmbeddedEndpoint, tmp_path: Path) -> None:
    with pytest.raises(EndpointError, match=f"127.0.0.1:{endpoint.port}"):
        EmbeddedEndpoint().start(tmp_path / "chdb", port=endpoint.port, timeout=30)

    assert not (tmp_path / "chdb").exists()  # refused before chDB opened anything


def test_second_endpoint_on_the_same_directory_fails_naming_it(
    endpoint: EmbeddedEndpoint,
) -> None:
    data_dir = endpoint.data_dir
    assert data_dir is not None
    second = EmbeddedEndpoint()

    with pytest.raises(EndpointError) as raised:
        second.start(data_dir, timeout=30)

    assert str(data_dir) in str(raised.value)
    assert "lock" in str(raised.value)
    assert second.pid is None
    assert running_endpoint(data_dir) == endpoint.url  # the first one's state is untouched


def test_stop_leaves_no_process_and_no_state(tmp_path: Path) -> None:
    owned = EmbeddedEndpoint()
    owned.start(tmp_path / "chdb", timeout=60)
    pid = owned.pid

    owned.stop()

    assert pid is not None and not psutil.pid_exists(pid)
    assert not owned.alive()
    assert not state_file(tmp_path / "chdb").exists()


def test_endpoint_exits_when_its_owner_dies(tmp_path: Path) -> None:
    owner = textwrap.dedent(
        f"""
        import os
        from anomaly.endpoint import EmbeddedEndpoint
        endpoint = EmbeddedEndpoint()
        endpoint.start({str(tmp_path / "chdb")!r})
        print(endpoint.pid, flush=True)
        os._exit(0)  # no cleanup: as if the owner crashed
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", owner],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    pid = int(done.stdout.strip())

    deadline = time.monotonic() + 15
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert not psutil.pid_exists(pid)
    assert running_endpoint(tmp_path / "chdb") is None


def test_running_endpoint_finds_a_live_one_and_drops_a_stale_state(
    endpoint: EmbeddedEndpoint, tmp_path: Path
) -> None:
    data_dir = endpoint.data_dir
    assert data_dir is not None
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale_dir = tmp_path / "chdb"
    stale = state_file(stale_dir)
    stale.write_text(
        json.dumps({"url": "http://127.0.0.1:9", "pid": finished.pid, "data_dir": str(stale_dir)})
    )

    assert running_endpoint(data_dir) == endpoint.url
    url, lease = ensure_endpoint(data_dir)
    assert url == endpoint.url and isinstance(lease, GuestLease)
    lease.stop()
    assert running_endpoint(stale_dir) is None
    assert not stale.exists()


def test_command_line_prints_the_url_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    helped = subprocess.run(
        [sys.executable, "-m", "anomaly.endpoint", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly.endpoint", "--data-dir", str(tmp_path / "chdb")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=root,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        found = running_endpoint(tmp_path / "chdb")
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert helped.returncode == 0
    assert "--data-dir" in helped.stdout and "127.0.0.1" in helped.stdout
    assert url.startswith("http://127.0.0.1:") and found == url
    assert code == 0
    assert not state_file(tmp_path / "chdb").exists()


def test_queries_run_at_once_on_separate_connections(endpoint: EmbeddedEndpoint) -> None:
    clients = [connect(endpoint) for _ in range(3)]

    started = time.monotonic()
    with ThreadPoolExecutor(len(clients)) as pool:
        slept = list(pool.map(lambda made: made.command("SELECT sleep(1)"), clients))
    elapsed = time.monotonic() - started

    assert slept == [0, 0, 0]
    assert elapsed < 2.5  # three one-second sleeps overlapped rather than queued
    for made in clients:
        made.close()


def test_set_in_one_request_does_not_reach_the_next(
    client: clickhouse_connect.driver.Client,
) -> None:
    client.command("SET max_threads = 5")

    seen = {client.command("SELECT getSetting('max_threads')") for _ in range(12)}

    assert 5 not in seen


def test_bad_insert_data_answers_with_a_parse_error_and_endpoint_goes_on(
    endpoint: EmbeddedEndpoint, client: clickhouse_connect.driver.Client
) -> None:
    client.command("CREATE TABLE strict (x UInt32) ENGINE = MergeTree ORDER BY x")
    bad_status, bad_headers, bad_body = exchange(
        endpoint, "POST", body=b"INSERT INTO strict FORMAT CSV\n1\nnot_a_number\n"
    )
    missing_status, missing_headers, _ = exchange(
        endpoint, "POST", body=b"INSERT INTO no_such_table FORMAT CSV\n1\n"
    )

    assert bad_status == 400
    assert bad_body.startswith(f"Code: {bad_headers['X-ClickHouse-Exception-Code']}.".encode())
    assert (missing_status, missing_headers["X-ClickHouse-Exception-Code"]) == (404, "60")
    assert client.command("SELECT count() FROM strict") == 0


def test_an_endpoint_outlives_its_owner_while_a_run_reusing_it_lives(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    go = tmp_path / "go"
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; from anomaly.endpoint import EmbeddedEndpoint\n"
        f"e = EmbeddedEndpoint(); print(e.start({str(data_dir)!r}), flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.1)\n"
        "e.stop()"
    )], stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    assert owner.stdout is not None
    url = owner.stdout.readline().strip()
    guest = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from anomaly.endpoint import ensure_endpoint\n"
        f"url, lease = ensure_endpoint({str(data_dir)!r}); print(url, flush=True)\n"
        "sys.stdin.readline(); lease.stop()"
    )], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    assert guest.stdout is not None and guest.stdin is not None
    assert guest.stdout.readline().strip() == url

    go.touch()  # the owner finishes first: the endpoint keeps serving its guest
    assert owner.wait(30) == 0
    time.sleep(2 * PARENT_POLL_SECONDS)
    assert running_endpoint(data_dir) == url

    guest.stdin.write("done\n")  # the last user leaves: the endpoint stops by itself
    guest.stdin.flush()
    assert guest.wait(30) == 0
    deadline = time.monotonic() + 10 * PARENT_POLL_SECONDS + 10
    while running_endpoint(data_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_endpoint(data_dir) is None
