from __future__ import annotations

import pytest

from s3dcp import (
    BinaryPrefixStrategy,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
    S3StorageWriter,
)
from s3dcp._prefix import DefaultPrefixStrategy, is_prefix_strategy, stems_for
from s3dcp._save import checked_stems


def test_default_layout() -> None:
    assert [DefaultPrefixStrategy()(r) for r in range(2)] == ["__0_", "__1_"]


def test_round_robin() -> None:
    s = RoundRobinPrefixStrategy(["shard1", "shard2"], epoch_num=5)
    assert [s(r) for r in range(3)] == ["shard1/epoch_5/__0_", "shard2/epoch_5/__1_", "shard1/epoch_5/__2_"]
    assert RoundRobinPrefixStrategy(["a/"]).generate_prefix(3) == "a/__3_"


def test_binary_and_hex_reversed_digits() -> None:
    b = BinaryPrefixStrategy().for_world_size(4)
    assert [b(r) for r in range(3)] == ["0000000000/__0_", "1000000000/__1_", "0100000000/__2_"]
    h = HexPrefixStrategy(min_prefix_length=4).for_world_size(32)
    assert h(1) == "1000/__1_" and h(15) == "f000/__15_" and h(16) == "0100/__16_"
    assert HexPrefixStrategy(epoch_num=3, min_prefix_length=2, prefix_count=256)(255) == "ff/epoch_3/__255_"


def test_wrap_around_when_prefix_count_is_below_world_size() -> None:
    h = HexPrefixStrategy(min_prefix_length=1, prefix_count=4)
    assert [h(r) for r in range(6)] == ["0/__0_", "1/__1_", "2/__2_", "3/__3_", "0/__4_", "1/__5_"]


def test_width_grows_with_prefix_count() -> None:
    b = BinaryPrefixStrategy(min_prefix_length=1).for_world_size(5)
    assert b(4) == "001/__4_"


def test_for_world_size_does_not_change_the_original() -> None:
    h = HexPrefixStrategy(min_prefix_length=1)
    configured = h.for_world_size(20)
    assert h.prefix_count is None and configured.prefix_count == 20  # type: ignore[attr-defined]
    fixed = HexPrefixStrategy(prefix_count=2)
    assert fixed.for_world_size(100) is fixed


@pytest.mark.parametrize(
    "make",
    [
        lambda: RoundRobinPrefixStrategy([]),
        lambda: RoundRobinPrefixStrategy(["ok", ""]),
        lambda: RoundRobinPrefixStrategy(["../up"]),
        lambda: BinaryPrefixStrategy(min_prefix_length=0),
        lambda: HexPrefixStrategy(prefix_count=0),
        lambda: HexPrefixStrategy(epoch_num=-1),
    ],
)
def test_bad_arguments(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_custom_subclass_needs_only_generate_prefix() -> None:
    class Mine(S3PrefixStrategyBase):
        def generate_prefix(self, rank: int) -> str:
            return f"custom/{rank:04d}_"

    assert Mine()(7) == "custom/0007_"
    assert Mine().for_world_size(3)(1) == "custom/0001_"


class _DuckStrategy:
    """Shaped like s3torchconnector's strategies: no s3dcp base class, no for_world_size."""

    def generate_prefix(self, rank: int) -> str:
        return f"duck/__{rank}_"


def test_stems_for_configures_world_size_and_accepts_duck_typed_strategies() -> None:
    assert stems_for(HexPrefixStrategy(min_prefix_length=1), 3) == ["0/__0_", "1/__1_", "2/__2_"]
    assert stems_for(_DuckStrategy(), 2) == ["duck/__0_", "duck/__1_"]
    assert is_prefix_strategy(_DuckStrategy()) and is_prefix_strategy(HexPrefixStrategy())
    assert not is_prefix_strategy("__{rank}_") and not is_prefix_strategy(lambda rank: "x")


def test_writer_takes_duck_typed_strategy_and_refuses_other_objects() -> None:
    writer = S3StorageWriter("us-east-1", "s3://bucket-name/ckpt", prefix_strategy=_DuckStrategy())
    assert checked_stems(writer.prefix_strategy, 2) == ["duck/__0_", "duck/__1_"]
    with pytest.raises(TypeError, match="generate_prefix"):
        S3StorageWriter("us-east-1", "s3://bucket-name/ckpt", prefix_strategy="hex")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stem", "message"),
    [("../up/__0_", "not a relative key"), ("/abs/__0_", "not a relative key"), ("same", "same key stem")],
)
def test_writer_refuses_stems_that_leave_the_checkpoint_or_collide(stem: str, message: str) -> None:
    class Fixed(S3PrefixStrategyBase):
        def generate_prefix(self, rank: int) -> str:
            return stem

    writer = S3StorageWriter("us-east-1", "s3://bucket-name/ckpt", prefix_strategy=Fixed())
    with pytest.raises(ValueError, match=message):
        checked_stems(writer.prefix_strategy, 2)
