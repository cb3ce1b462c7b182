"""The floor BentoML sets: the bare FastAPI app of `scripts/bench_service.py` (two ONNX models, no validation, no
metrics of its own, no ledger) mounted in a BentoML service with the service's own settings (access log off,
tracing off on the prediction route, the same request timeout), served by `bentoml serve` like ours.

    bentoml serve bench_bare_bento:BareService --working-dir scripts   (BENCH_BUNDLE=<bundle dir>)

`scripts/bench_service.py --floor` starts it beside the bare FastAPI app and our service. Whatever our service
does, it runs inside this much BentoML: its start to /readyz and its requests/s against the bare app are what
BentoML alone costs. The FastAPI app is built on the first request, in the worker, so the start measured is
BentoML's own (no numpy, onnxruntime or models imported), and nothing is loaded when this module is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml


class LazyBareApp:
    """An ASGI app that builds `bench_service.fastapi_app` on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from bench_service import fastapi_app

            self._app = fastapi_app(Path(os.environ["BENCH_BUNDLE"]))
        await self._app(scope, receive, send)


@bentoml.service(name="bare", workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": ["/predict/electrode"]})
@bentoml.asgi_app(LazyBareApp(), path="/")
class BareService:
    """No API of its own: the mounted app answers POST /predict/electrode, BentoML answers /readyz."""
