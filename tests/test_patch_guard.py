"""Patches of library internals refuse to apply to code they were not written for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cellmfg.patch_guard import PatchedCodeChangedError, expect_source, source_sha256


def _reviewed(x: int) -> int:
    return x + 1


def _upgraded(x: int) -> int:
    return x + 2


def test_the_reviewed_source_passes_and_a_changed_one_fails_naming_the_function() -> None:
    reviewed = source_sha256(_reviewed)
    expect_source(_reviewed, reviewed, "a test patch")
    with pytest.raises(PatchedCodeChangedError, match=r"test_patch_guard\._upgraded has changed.*a test patch"):
        expect_source(_upgraded, reviewed, "a test patch")


def test_a_function_without_source_fails_loudly() -> None:
    with pytest.raises(PatchedCodeChangedError, match="cannot read the source"):
        expect_source(len, "0" * 64, "a test patch")


def test_the_pinned_bentoml_is_the_code_the_service_patches_were_written_for() -> None:
    # A fresh interpreter: other tests in this process may already have installed the patches.
    check = (
        "from bentoml._internal.server import http_app\n"
        "from bentoml._internal.server.http.traffic import TimeoutMiddleware\n"
        "from cellmfg.patch_guard import source_sha256\n"
        "from service.web import logs, patches\n"
        "assert source_sha256(TimeoutMiddleware.__call__) == patches.TIMEOUT_CALL_SHA256\n"
        "assert source_sha256(TimeoutMiddleware._set_timer_out) == patches.SET_TIMER_OUT_SHA256\n"
        "assert source_sha256(http_app.log_exception) == logs.LOG_EXCEPTION_SHA256\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
