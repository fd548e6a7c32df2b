"""Prefix strategies: map a rank to the key stem of its shard objects.

S3 spreads load by key prefix, so thousands of ranks writing under one
prefix get throttled. A strategy returns, for each rank, the stem its shard
files start with, relative to the checkpoint path; the writer appends
``{i}.distcp``. Strategies are pure: they know nothing about process groups.
The writer tells them the world size through :meth:`S3PrefixStrategyBase.for_world_size`.

The classes are drop-in compatible with s3torchconnector's of the same names.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "checked_strategy",
    "S3PrefixStrategyBase",
    "PrefixStrategy",
    "is_prefix_strategy",
    "stems_for",
    "DefaultPrefixStrategy",
    "RoundRobinPrefixStrategy",
    "BinaryPrefixStrategy",
    "HexPrefixStrategy",
]


class S3PrefixStrategyBase(ABC):
    """A rank-to-key-stem mapping. Subclasses implement :meth:`generate_prefix`."""

    @abstractmethod
    def generate_prefix(self, rank: int) -> str:
        """Return the key stem of ``rank``'s shard objects, e.g. ``"__3_"``."""

    def __call__(self, rank: int) -> str:
        return self.generate_prefix(rank)

    def for_world_size(self, world_size: int) -> S3PrefixStrategyBase:
        """Return the strategy to use for a save with ``world_size`` ranks.

        The default returns ``self``; strategies whose layout depends on the
        world size return a configured copy, never changing ``self``.
        """
        return self


class PrefixStrategy(Protocol):
    """What the writer needs of a strategy: S3PrefixStrategyBase, or any look-alike."""

    def generate_prefix(self, rank: int) -> str: ...


class DefaultPrefixStrategy(S3PrefixStrategyBase):
    """DCP's own layout: ``__{rank}_`` directly under the checkpoint path."""

    def generate_prefix(self, rank: int) -> str:
        return f"__{rank}_"


def _epoch_part(epoch_num: int | None) -> str:
    return "" if epoch_num is None else f"epoch_{epoch_num}/"


def _check_epoch(epoch_num: int | None) -> None:
    if epoch_num is not None and (not isinstance(epoch_num, int) or epoch_num < 0):
        raise ValueError(f"epoch_num must be an int >= 0 or None, got {epoch_num!r}")


class RoundRobinPrefixStrategy(S3PrefixStrategyBase):
    """Deal ranks over user-given prefixes: rank ``r`` uses ``user_prefixes[r % n]``.

    ``["shard1", "shard2"]`` with ``epoch_num=5`` gives ``shard1/epoch_5/__0_``,
    ``shard2/epoch_5/__1_``, ``shard1/epoch_5/__2_``, ...
    """

    def __init__(self, user_prefixes: Sequence[str], epoch_num: int | None = None) -> None:
        if isinstance(user_prefixes, str) or not user_prefixes:
            raise ValueError("user_prefixes must be a non-empty list of strings")
        cleaned = []
        for prefix in user_prefixes:
            if not isinstance(prefix, str) or not prefix.strip("/"):
                raise ValueError(f"every user prefix must be a non-empty string, got {prefix!r}")
            if any(part in ("", ".", "..") for part in prefix.strip("/").split("/")):
                raise ValueError(f"user prefix {prefix!r} has an empty, '.' or '..' segment")
            cleaned.append(prefix.strip("/"))
        _check_epoch(epoch_num)
        self.user_prefixes = cleaned
        self.epoch_num = epoch_num

    def generate_prefix(self, rank: int) -> str:
        prefix = self.user_prefixes[rank % len(self.user_prefixes)]
        return f"{prefix}/{_epoch_part(self.epoch_num)}__{rank}_"


class _ReversedDigitsStrategy(S3PrefixStrategyBase):
    """``{p}/[epoch_{n}/]__{rank}_`` with ``p`` = ``rank % prefix_count`` in base ``BASE``,
    zero-padded, least significant digit first, so consecutive ranks differ
    in the first character."""

    BASE = 10
    DIGITS = "0123456789abcdef"

    def __init__(
        self,
        epoch_num: int | None = None,
        min_prefix_length: int = 10,
        prefix_count: int | None = None,
    ) -> None:
        if not isinstance(min_prefix_length, int) or min_prefix_length < 1:
            raise ValueError(f"min_prefix_length must be an int >= 1, got {min_prefix_length!r}")
        if prefix_count is not None and (not isinstance(prefix_count, int) or prefix_count < 1):
            raise ValueError(f"prefix_count must be an int >= 1 or None, got {prefix_count!r}")
        _check_epoch(epoch_num)
        self.epoch_num = epoch_num
        self.min_prefix_length = min_prefix_length
        self.prefix_count = prefix_count

    def for_world_size(self, world_size: int) -> S3PrefixStrategyBase:
        if self.prefix_count is not None:
            return self
        configured = copy.copy(self)
        configured.prefix_count = max(1, world_size)
        return configured

    def _digits_needed(self, count: int) -> int:
        digits, largest = 1, count - 1
        while largest >= self.BASE:
            largest //= self.BASE
            digits += 1
        return digits

    def generate_prefix(self, rank: int) -> str:
        count = self.prefix_count or 1
        width = max(self.min_prefix_length, self._digits_needed(count))
        value = rank % count
        digits = []
        for _ in range(width):
            value, digit = divmod(value, self.BASE)
            digits.append(self.DIGITS[digit])
        return f"{''.join(digits)}/{_epoch_part(self.epoch_num)}__{rank}_"


def is_prefix_strategy(strategy: object) -> bool:
    """True for an :class:`S3PrefixStrategyBase` or any object with a callable
    ``generate_prefix(rank)``, such as s3torchconnector's strategies, so code
    written for that package keeps working unchanged."""
    return isinstance(strategy, S3PrefixStrategyBase) or callable(getattr(strategy, "generate_prefix", None))


def checked_strategy(strategy: object) -> PrefixStrategy:
    """The strategy a writer was given (the default when ``None``); a ``TypeError`` for anything else."""
    if strategy is None:
        return DefaultPrefixStrategy()
    if not is_prefix_strategy(strategy):
        raise TypeError(
            "prefix_strategy must be an S3PrefixStrategyBase (e.g. HexPrefixStrategy()) or have a "
            f"generate_prefix(rank) method, not {type(strategy).__name__}"
        )
    return strategy  # type: ignore[return-value]


def stems_for(strategy: PrefixStrategy, world_size: int) -> list[str]:
    """Every rank's key stem for a save with ``world_size`` ranks."""
    configure = getattr(strategy, "for_world_size", None)
    configured: PrefixStrategy = configure(world_size) if callable(configure) else strategy
    return [configured.generate_prefix(rank) for rank in range(world_size)]


class BinaryPrefixStrategy(_ReversedDigitsStrategy):
    """Reversed base-2 prefixes: rank 1 of length 10 is ``1000000000``."""

    BASE = 2


class HexPrefixStrategy(_ReversedDigitsStrategy):
    """Reversed base-16 prefixes: rank 16 of length 4 is ``0100``."""

    BASE = 16
