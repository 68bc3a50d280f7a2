"""Everything a local run starts listens on 127.0.0.1 only: Ray, Spark, the endpoint."""

from __future__ import annotations

import psutil
import pytest

from anomaly.endpoint import EmbeddedEndpoint

pytestmark = pytest.mark.engine

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def open_listeners() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.ip not in LOOPBACK
    }


def test_local_ray_listens_on_loopback_only():
    import ray

    from anomaly.engines.ray_engine import start_ray

    before = open_listeners()
    assert start_ray(None, 1)
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        assert open_listeners() - before == set()
    finally:
        ray.shutdown()


def test_local_spark_listens_on_loopback_only():
    from anomaly.engines.spark_engine import spark_session

    before = open_listeners()
    session = spark_session(None, 1)
    try:
        assert session.sparkContext.parallelize([1, 2], 2).sum() == 3
        assert open_listeners() - before == set()
    finally:
        session.stop()


def test_embedded_endpoint_listens_on_loopback_only(tmp_path):
    before = open_listeners()
    with EmbeddedEndpoint() as endpoint:
        endpoint.start(tmp_path / "db")
        assert endpoint.url.startswith("http://127.0.0.1:")
        assert open_listeners() - before == set()
