"""A botocore that behaves as a future release might, for the tests of s3dcp's checks on it."""

from __future__ import annotations

from typing import Any

import botocore.hooks
import pytest


def unshared_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give ``before-parameter-build`` handlers a copy of the request context, not the one ``before-call`` gets."""
    emit = botocore.hooks.EventAliaser.emit

    def emit_with_copy(self: Any, event_name: str, **kwargs: Any) -> Any:
        if event_name.startswith("before-parameter-build") and "context" in kwargs:
            kwargs["context"] = dict(kwargs["context"])
        return emit(self, event_name, **kwargs)

    monkeypatch.setattr(botocore.hooks.EventAliaser, "emit", emit_with_copy)
