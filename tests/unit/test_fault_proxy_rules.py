"""The fault proxy's rules decide what they should (the proxy is a test instrument too)."""

from __future__ import annotations

import pytest

from s3dcp_testkit.fault_proxy import Rule


def test_throttle_keeps_one_token_bucket_per_partition() -> None:
    rule = Rule("throttle", rate=1e-6, burst=2, partition_root="/b/ckpt/", partition_chars=2)
    throttled = [rule.matches("PUT", "/b/ckpt/ab/__0_0.distcp", "", {}) for _ in range(3)]
    assert throttled == [False, False, True]  # two tokens, then SlowDown
    assert not rule.matches("PUT", "/b/ckpt/cd/__1_0.distcp", "", {})  # another partition
    assert not rule.matches("PUT", "/b/other/ab/x", "", {})  # outside the root: never throttled
    assert rule.partition("/b/ckpt/ab/__0_0.distcp") == "ab"


def test_filters_by_method_key_query_header_and_count() -> None:
    rule = Rule("slowdown", method="PUT", key_pattern=r"\.metadata$", header="If-None-Match", count=1)
    assert not rule.matches("GET", "/b/c/.metadata", "", {"If-None-Match": "*"})
    assert not rule.matches("PUT", "/b/c/__0_0.distcp", "", {"If-None-Match": "*"})
    assert not rule.matches("PUT", "/b/c/.metadata", "", {})
    assert rule.matches("PUT", "/b/c/.metadata", "", {"If-None-Match": "*"})
    rule.hits = 1
    assert not rule.matches("PUT", "/b/c/.metadata", "", {"If-None-Match": "*"})
    assert Rule("reset", query_contains="partNumber=2").matches("PUT", "/b/k", "partNumber=2&uploadId=x", {})


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        Rule("explode")
    with pytest.raises(ValueError):
        Rule("throttle", rate=0)
