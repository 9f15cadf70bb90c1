"""The Segment tracking API, driven by Segment's own Python client."""

from __future__ import annotations

import httpx
import pytest

from tests.collector.support import API_KEY
from tests.fakes.proxy import DroppingProxy


@pytest.mark.slow
def test_segments_own_client_lands_each_call_once_through_lost_answers(spark, start_collector):
    from segment.analytics import Client

    from jobs.runtime.tables import read_table
    from jobs.stages.ingest import ingest

    collector = start_collector()
    proxy = DroppingProxy(int(collector.url.rsplit(":", 1)[1]), drop=2)
    errors: list[Exception] = []
    client = Client(API_KEY, host=proxy.url, gzip=True, upload_size=3, upload_interval=0.05,
                    on_error=lambda error, batch: errors.append(error))
    try:
        client.identify("c42", {"email": "ada@example.com", "firstName": "Ada"}, anonymous_id="anon-1")
        client.page("c42", "Shoes", "Running", {"url": "https://shop.example/shoes"}, anonymous_id="anon-1")
        client.track("c42", "Product Viewed", {"product_id": "p1", "price": 50, "session_id": "sess-1"})
        client.track("c42", "Product Added", {"product_id": "p1", "price": 50, "quantity": 1})
        client.track(None, "Order Completed", {"order_id": "o1", "total": 50}, anonymous_id="anon-1")
        client.flush()
    finally:
        client.shutdown()
        proxy.close()
    assert not errors
    assert proxy.dropped == 2 and proxy.forwarded > 2  # the client retried what it never heard back on
    collector.stop()
    lines = collector.lines()
    assert len(lines) == 4 == len({line["event_id"] for line in lines})  # each messageId once
    by_type = {line["event_type"]: line for line in lines}
    assert set(by_type) == {"page_view", "Product Viewed", "Product Added", "Order Completed"}
    [profile] = collector.lines("profiles")
    assert {k: profile[k] for k in ("customer_id", "email", "first_name", "anonymous_id")} == {
        "customer_id": "c42", "email": "ada@example.com", "first_name": "Ada", "anonymous_id": "anon-1"}
    assert "last_name" not in profile and profile["updated_at"]  # partial: only what it was sent
    assert by_type["page_view"]["url"] == "https://shop.example/shoes"
    assert by_type["page_view"]["properties"] == {"url": "https://shop.example/shoes", "page_name": "Running",
                                                  "page_category": "Shoes"}
    assert (by_type["Product Viewed"]["product_id"], by_type["Product Viewed"]["session_id"]) == ("p1", "sess-1")
    assert by_type["Product Added"]["customer_id"] == "c42"
    assert by_type["Order Completed"]["anonymous_id"] == "anon-1"
    assert not any("user_agent" in line for line in lines)  # the SDK's agent is not the shopper's

    ingest(spark, collector.settings, "events")
    ingest(spark, collector.settings, "crm")
    root = collector.settings.lakehouse.root
    bronze = read_table(spark, root, "bronze.events").collect()
    assert sorted(r["event_id"] for r in bronze) == sorted(line["event_id"] for line in lines)
    assert [r["customer_id"] for r in read_table(spark, root, "bronze.crm").collect()] == ["c42"]


@pytest.mark.parametrize(("auth", "status"), [(None, 401), (("wrong", ""), 401)])
def test_a_segment_call_without_a_known_write_key_writes_nothing(start_collector, auth, status):
    collector = start_collector()
    call = {"userId": "c1", "event": "Product Added", "timestamp": "2026-11-30T10:00:00Z"}
    answer = httpx.post(f"{collector.url}/v1/track", json=call, auth=auth)
    assert answer.status_code == status
    collector.stop()
    assert collector.written() == b""


def test_single_calls_and_unknown_call_types(start_collector):
    collector = start_collector()
    with httpx.Client(base_url=collector.url, auth=(API_KEY, "")) as client:
        track = client.post("/v1/track", json={"userId": "c1", "event": "Product Added", "messageId": "m1",
                                               "timestamp": "2026-11-30T10:00:00Z", "properties": {"sku": "p9"}})
        batch = client.post("/v1/batch", json={"batch": [{"type": "alias", "userId": "c1", "previousId": "a",
                                                          "timestamp": "2026-11-30T10:00:00Z"}]})
    assert track.status_code == 200 and track.json()["success"] is True
    assert batch.status_code == 400 and batch.json()["events"][0]["errors"][0]["loc"] == "batch[0].event_type"
    collector.stop()
    assert [(line["event_id"], line["product_id"]) for line in collector.lines()] == [("m1", "p9")]
