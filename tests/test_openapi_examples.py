"""Issue 22, finding 11: every request example of the OpenAPI document is answered 200.

Schema-driven clients (and schemathesis' examples phase) send the documented examples as they are, so each must be
a request the service accepts. The design examples name realistic targets (an NMC cathode of 3 g/cm³, a tortuosity
of 1.06), which the fake bundle's models (levels 2 g/cm³, 1.5) cannot reach; here those models answer around the
examples' own targets, as trained ones do, so a refusal can only come from the request itself (a bound outside the
training range, an unknown parameter, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellmfg.contract import write_bundle
from cellmfg.domain import DATASETS
from service.design.schemas import ELECTRODE_DESIGN_EXAMPLE, GDL_DESIGN_EXAMPLE
from testkit.fakes import custom_model, fake_models, service_client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")


def _trained_ranges(dataset: str) -> dict[str, tuple[float, float]]:
    """The ranges trained models report: the nominal ones, except where the drawn data stops short of an end (the
    generated gdl1000 compression factors span 0.002-0.495 of the nominal 0-0.5)."""
    ranges = dict(DATASETS[dataset].ranges)
    if dataset == "gdl1000":
        ranges["compression_factor"] = (0.002, 0.495)
    return ranges


def _realistic_bundle(out: Path) -> Path:
    """The fake bundle, with the models the design examples search answering around the examples' targets."""
    levels = {("density", "nmc"): ELECTRODE_DESIGN_EXAMPLE["targets"]["density_g_cm3"]["value"],
              ("mass_loading", "nmc"): ELECTRODE_DESIGN_EXAMPLE["targets"]["mass_loading_mg_cm2"]["value"],
              ("tortuosity", "gdl1000"): GDL_DESIGN_EXAMPLE["targets"]["tortuosity"]["value"]}
    replaced = [custom_model(task, dataset, _trained_ranges(dataset), kind=DATASETS[dataset].kind, level=level)
                for (task, dataset), level in levels.items()]
    names = {m.name for m in replaced}
    write_bundle([m for m in fake_models() if m.name not in names] + replaced, out)
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with service_client(_realistic_bundle(tmp_path_factory.mktemp("examples") / "bundle")) as c:
        yield c


def _request_examples(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """(path, example) for every JSON request example, inline or in the referenced component schema."""
    examples = []
    for path, item in spec["paths"].items():
        operation = item.get("post", {})
        content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        schema = content.get("schema", {})
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        found = [content.get("example"), schema.get("example"),
                 *(e.get("value") for e in content.get("examples", {}).values())]
        examples += [(path, example) for example in found if example is not None]
    return examples


def test_every_request_example_of_the_openapi_document_is_answered_200(client: Any) -> None:
    spec = client.get("/docs.json").json()
    examples = _request_examples(spec)
    assert {path for path, _ in examples} >= {"/predict/electrode", "/predict/gdl", "/design/electrode",
                                              "/design/gdl"}
    for path, example in examples:
        response = client.post(path, json=example)
        assert response.status_code == 200, (path, response.text[:500])


def test_the_gdl_design_example_bounds_lie_inside_the_training_range() -> None:
    low, high = DATASETS["gdl1000"].ranges["compression_factor"]
    bound = GDL_DESIGN_EXAMPLE["bounds"]["compression_factor"]
    # The data drawn from the nominal range reaches neither end (0.002-0.495 of 0-0.5): keep well inside it.
    assert low + 0.05 * (high - low) <= bound["min"] < bound["max"] <= high - 0.05 * (high - low)
