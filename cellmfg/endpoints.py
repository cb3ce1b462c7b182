"""Where a registered model answers once promoted: the service catalogue's rule, stated for the commands that
register and promote models (`train pretrain/transfer`, `registry promote`) so they can say it before it matters.

Every promoted model answers at `POST /predict/{name}_onnx`. It also answers on its kind's endpoint,
`POST /predict/electrode` with `chemistry=DATASET` or `POST /predict/gdl` with `dataset=DATASET`, when the catalogue
finds it there: its name is `{task}_{dataset}` (`cellmfg.domain.model_name`), its target is one of the kind's and its
inputs are the kind's feature columns in order (`service.engine.model_store.endpoint_slot` applies the same rule to the
contract; tests/test_endpoints.py keeps the two in step). Training guarantees the last two for any lab CSV, so the
name is what decides: a model registered as `density_cunha` from data recorded as `cunha_nmc_recipes` is not found
under either dataset name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cellmfg.domain import DATASETS, TARGETS, Kind, model_name, targets_for

# What the service accepts as a `chemistry` / `dataset` value (service.formats.schemas.DatasetName).
DATASET_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
DATASET_NAME_RULE = "1 to 200 letters, digits, '_', '.' or '-'"
ONNX_SUFFIX = "_onnx"


def request_field(kind: Kind) -> str:
    """The request field that names the dataset on the kind's endpoint."""
    return "chemistry" if kind == "electrode" else "dataset"


def dataset_name_problem(dataset: str, kind: Kind) -> str | None:
    """Why `dataset` cannot name a lab's `kind` data on the kind's endpoint, or None when it can."""
    if not DATASET_NAME_PATTERN.fullmatch(dataset):
        return (f"{dataset!r} is not a {request_field(kind)} name the service accepts ({DATASET_NAME_RULE})")
    paper = DATASETS.get(dataset)
    if paper is not None and paper.kind != kind:
        return f"{dataset!r} is the paper's {paper.kind} dataset; {kind} data needs another name"
    return None


@dataclass(frozen=True)
class Serving:
    """Where the registered (Keras) model `model`, trained for `task` on `kind` data recorded as `dataset`, answers
    once promoted."""

    model: str
    kind: Kind
    task: str
    dataset: str

    @property
    def field(self) -> str:
        return request_field(self.kind)

    @property
    def onnx_name(self) -> str:
        return f"{self.model}{ONNX_SUFFIX}"

    @property
    def expected_name(self) -> str:
        """The name the catalogue looks up for this task and dataset."""
        return model_name(self.task, self.dataset)

    @property
    def on_kind_endpoint(self) -> bool:
        target = TARGETS.get(self.task)
        return (self.model == self.expected_name and target is not None and target in targets_for(self.kind)
                and DATASET_NAME_PATTERN.fullmatch(self.dataset) is not None)

    def endpoints(self) -> list[str]:
        """The routes, in the form `GET /models` lists them."""
        routes = [f"POST /predict/{self.onnx_name}"]
        if self.on_kind_endpoint:
            routes.insert(0, f"POST /predict/{self.kind} ({self.field}={self.dataset})")
        return routes

    def note(self) -> str | None:
        """Why the model is not answered for its dataset on the kind's endpoint, and what would make it so."""
        if self.on_kind_endpoint:
            return None
        prefix = f"{self.task}_"
        wanted = self.model[len(prefix):] if self.model.startswith(prefix) else None
        hint = (f"to serve it as {self.field} {wanted!r}, train with --dataset {wanted} (the name then defaults to "
                f"{self.model})" if wanted and DATASET_NAME_PATTERN.fullmatch(wanted)
                else f"drop --name to register it as {self.expected_name}")
        return (f"{self.model} answers only at POST /predict/{self.onnx_name}, not for {self.field} "
                f"{self.dataset!r} at POST /predict/{self.kind}: the service looks that {self.field} up as "
                f"{self.expected_name}; {hint}")

    def sentence(self) -> str:
        """One line for the console: the dataset, the kind and the routes (and the note when there is one)."""
        text = (f"{self.field} {self.dataset} ({self.kind}): answers at " + " and ".join(self.endpoints()))
        note = self.note()
        return text if note is None else f"{text}\nnote: {note}"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "onnx_model": self.onnx_name, "kind": self.kind, "task": self.task,
                "field": self.field, self.field: self.dataset, "dataset": self.dataset,
                "on_kind_endpoint": self.on_kind_endpoint, "endpoints": self.endpoints(), "note": self.note()}
