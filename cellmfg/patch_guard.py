"""Patches of library internals check, when applied, that the patched code is the code they were written for.

Each of our patches (BentoML's request timer, BentoML's exception logging, MLflow's Keras example writer) relies on
how one private function of a pinned library version works. The pins keep them valid today; an upgrade could
silently change what they patch. `expect_source` compares a SHA-256 of the function's source with the one the patch
was reviewed against and fails loudly, naming the function and what to review, when they differ.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any


class PatchedCodeChangedError(RuntimeError):
    """A library function we patch is not the code the patch was written for (a library upgrade)."""


def source_sha256(function: Callable[..., Any]) -> str:
    """SHA-256 of a function's dedented source text."""
    return hashlib.sha256(textwrap.dedent(inspect.getsource(function)).encode()).hexdigest()


def expect_source(function: Callable[..., Any], expected_sha256: str, patch: str) -> None:
    """Raise `PatchedCodeChangedError` unless `function`'s source hashes to `expected_sha256`."""
    try:
        actual = source_sha256(function)
    except (OSError, TypeError) as error:  # no source available (a compiled or frozen build)
        raise PatchedCodeChangedError(
            f"cannot read the source of {_qualified(function)} to check it before patching ({patch}): {error}"
        ) from error
    if actual != expected_sha256:
        raise PatchedCodeChangedError(
            f"{_qualified(function)} has changed (source sha256 {actual[:16]}…, the patch was written for "
            f"{expected_sha256[:16]}…): review {patch} against the new library version, then update its "
            "expected hash")


def _qualified(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
