"""A ranged GET answered with fewer bytes than asked, because the object ends early, is told apart."""

from __future__ import annotations

from typing import Any

import pytest

from s3dcp._errors import S3RequestError
from s3dcp._s3.download import SHORT_OBJECT_CODE, _check_served_range


class Body:
    closed = False

    def close(self) -> None:
        self.closed = True


def answer(**fields: Any) -> dict[str, Any]:
    return {"Body": Body(), **fields}


@pytest.mark.parametrize(
    "response",
    [
        answer(ContentRange="bytes 100-149/150", ContentLength=50),  # the object ends inside the range
        answer(ContentRange="bytes 100-120/121", ContentLength=21),
        answer(ContentLength=120),  # a store that ignores Range: the whole, shorter object
    ],
)
def test_an_object_that_ends_before_the_range_is_short(response: dict[str, Any]) -> None:
    with pytest.raises(S3RequestError) as raised:
        _check_served_range(response, "b", "k", 100, 200)
    assert raised.value.code == SHORT_OBJECT_CODE and "bytes 100-199" in str(raised.value)
    assert response["Body"].closed


@pytest.mark.parametrize(
    "response",
    [
        answer(ContentRange="bytes 0-99/1000", ContentLength=100),  # another range than asked
        answer(ContentLength=1000),  # the whole, longer object: Range ignored
        answer(ContentRange="bytes 100-150/*", ContentLength=51),  # size not told
    ],
)
def test_other_wrong_answers_are_not_called_short(response: dict[str, Any]) -> None:
    with pytest.raises(S3RequestError) as raised:
        _check_served_range(response, "b", "k", 100, 200)
    assert raised.value.code != SHORT_OBJECT_CODE


def test_the_range_asked_for_passes() -> None:
    _check_served_range(answer(ContentRange="bytes 100-199/500", ContentLength=100), "b", "k", 100, 200)
    _check_served_range(answer(ContentLength=200), "b", "k", 0, 200)
