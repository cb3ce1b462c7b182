"""A challenger from the line's own measurements (`cellmfg train from-ledger`): the champion's original target rows
plus the measured rows of the prediction ledger, transferred from the champion's own base net.

The ledger rows come from the service's export (`GET /outcomes?model=…`, or a file `cellmfg ledger export` wrote),
in the dataset CSV schema: sample_id (the prediction id), group_id (the client's sheet or batch id, else the sample
or prediction id), the inputs and the measured targets. Training imports no service code; the export is the seam.

`combine` is pure: a ledger group keeps all its rows together (its label is prefixed `ledger:`, so it never merges
with an original group), rows the original data already holds (a champion itself trained from the ledger) are not
counted twice, rows without the target measured are left out, and a ledger row repeating an earlier row's inputs
and measured value exactly is kept once (the training data refuses exact duplicates). `parent_champion` reads the
registry: which Keras version the served champion came from, its base net, its data and its dataset.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellmfg.dataio import row_groups
from cellmfg.domain import GROUP_ID, SAMPLE_ID, Kind, feature_columns

CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"
ONNX_SUFFIX = "_onnx"
LEDGER_GROUP_PREFIX = "ledger:"
DEFAULT_SERVICE_URL = "http://127.0.0.1:3000"


class FromLedgerError(ValueError):
    """A challenger cannot be trained as asked; nothing was trained or registered. The message says why."""


@dataclass(frozen=True)
class ParentChampion:
    """The served champion a challenger is trained to replace, and what it was trained from."""

    model: str  # the Keras model name, e.g. density_nmc
    onnx_version: str
    keras_version: str  # the version of `model` whose data, base and dataset the challenger reuses
    role: str
    base_name: str
    base_version: str
    dataset: str
    target_column: str
    features: tuple[str, ...]
    data_source: str
    data_sha256: str


@dataclass(frozen=True)
class Combined:
    """The training rows (dataset CSV schema) and what the ledger contributed."""

    frame: pd.DataFrame
    original_rows: int
    ledger_rows: int
    ledger_groups: int
    already_in_data: int  # ledger rows the original data already held (not counted twice)
    first_predicted_at: datetime | None
    last_predicted_at: datetime | None
    # Ledger rows whose inputs and measured value repeat an earlier row exactly (two punches of a sheet measured
    # alike to the lab's last digit): kept once, since the training data refuses exact duplicates.
    exact_duplicates: int = 0

    def lineage(self) -> dict[str, str]:
        """Model-version tags saying what the ledger contributed."""
        return {"ledger_rows": str(self.ledger_rows), "ledger_groups": str(self.ledger_groups),
                "original_rows": str(self.original_rows), "ledger_rows_already_in_data": str(self.already_in_data),
                "ledger_first_predicted_at": _iso(self.first_predicted_at),
                "ledger_last_predicted_at": _iso(self.last_predicted_at),
                "ledger_exact_duplicates_dropped": str(self.exact_duplicates)}


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""


def prediction_time(prediction_id: str) -> datetime | None:
    """When a prediction was made, from its UUIDv7 id (the first 48 bits are Unix milliseconds); None for another
    kind of id."""
    try:
        parsed = uuid.UUID(str(prediction_id))
    except ValueError:
        return None
    if parsed.version != 7:
        return None
    return datetime.fromtimestamp(int(parsed.hex[:12], 16) / 1000.0, tz=UTC)


def read_ledger_csv(text: str, source: str) -> pd.DataFrame:
    """The ledger export (CSV text) as a frame of strings, or a clear error naming the source."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise FromLedgerError(f"{source}: not a ledger export ({error})") from error
    missing = [c for c in (SAMPLE_ID, GROUP_ID) if c not in frame.columns]
    if missing:
        raise FromLedgerError(f"{source}: not a ledger export: no column(s) {', '.join(missing)} (expected the "
                              "dataset CSV schema of GET /outcomes or `cellmfg ledger export`)")
    return frame


def combine(original: pd.DataFrame, kind: Kind, target_column: str, ledger: pd.DataFrame, source: str
            ) -> Combined:
    """Original rows + the ledger rows with `target_column` measured, in the dataset CSV schema (sample_id,
    group_id, features, target); FromLedgerError when the ledger adds no measured row."""
    features = feature_columns(kind)
    missing = [c for c in (*features, target_column) if c not in ledger.columns]
    if missing:
        raise FromLedgerError(f"{source}: the ledger export has no column(s) {', '.join(missing)}: it is not "
                              f"{kind} data for {target_column}")
    base = original[[*features, target_column]].copy()
    base.insert(0, GROUP_ID, row_groups(original, kind))
    base.insert(0, SAMPLE_ID, original[SAMPLE_ID].astype(str).to_numpy() if SAMPLE_ID in original.columns
                else [f"data-{i}" for i in range(len(original))])
    base = base[base[target_column].notna()]
    measured = ledger[ledger[target_column].astype(str).str.strip() != ""]
    if measured.empty:
        raise FromLedgerError(f"{source}: no outcomes yet: no measured {target_column} in the ledger (post the QC "
                              "lab's measurements with POST /outcomes first)")
    known = set(base[SAMPLE_ID])
    already = measured[SAMPLE_ID].astype(str).isin(known)
    new = measured[~already.to_numpy()]
    rows = pd.DataFrame({SAMPLE_ID: new[SAMPLE_ID].astype(str).to_numpy(),
                         GROUP_ID: [g if g.startswith(LEDGER_GROUP_PREFIX) else f"{LEDGER_GROUP_PREFIX}{g}"
                                    for g in new[GROUP_ID].astype(str)]})
    for column in (*features, target_column):
        rows[column] = pd.to_numeric(new[column], errors="coerce").to_numpy(dtype="float64")
    bad = rows[[*features, target_column]].isna().any(axis=1).to_numpy()
    if bad.any():
        raise FromLedgerError(f"{source}: ledger row with sample_id {rows[SAMPLE_ID].iloc[int(np.argmax(bad))]!r} "
                              "has a blank or non-numeric input or target")
    values = [*features, target_column]
    repeats = pd.concat([base[values], rows[values]], ignore_index=True).duplicated(keep="first").to_numpy()
    duplicates = repeats[len(base):]
    rows = rows[~duplicates]
    times = [t for t in (prediction_time(s) for s in rows[SAMPLE_ID]) if t is not None]
    return Combined(frame=pd.concat([base, rows], ignore_index=True), original_rows=len(base),
                    ledger_rows=len(rows), ledger_groups=int(rows[GROUP_ID].nunique()),
                    already_in_data=int(already.sum()), first_predicted_at=min(times) if times else None,
                    last_predicted_at=max(times) if times else None, exact_duplicates=int(duplicates.sum()))


def fetch_ledger(service_url: str, onnx_model: str, since: datetime | None, token: str | None,
                 timeout: float = 60.0) -> str:
    """The service's export of `onnx_model`'s measured predictions (GET /outcomes) as CSV text."""
    import httpx

    url = service_url.rstrip("/") + "/outcomes"
    params = {"model": onnx_model, **({"since": since.isoformat()} if since is not None else {})}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as error:
        raise FromLedgerError(f"--ledger-url {service_url}: cannot read the ledger ({type(error).__name__}: "
                              f"{error}); give the service's address, or a file with --ledger-csv") from error
    if response.status_code != 200:
        try:
            detail = str(response.json().get("error", response.text))
        except ValueError:
            detail = response.text[:300]
        raise FromLedgerError(f"--ledger-url {service_url}: GET /outcomes?model={onnx_model} answered "
                              f"{response.status_code}: {detail}")
    return response.text


def parent_champion(client: Any, model: str) -> ParentChampion:
    """The champion `model` serves now (its ONNX `champion`) and the Keras transfer behind it; FromLedgerError
    for an unknown model or one without a champion."""
    from mlflow.exceptions import MlflowException

    if model.endswith(ONNX_SUFFIX):
        raise FromLedgerError(f"--model {model!r} is an ONNX export; give the Keras model it came from, "
                              f"{model.removesuffix(ONNX_SUFFIX)}")
    versions = _versions(client, model)
    if not versions:
        known = sorted(m.name for m in client.search_registered_models() if not m.name.endswith(ONNX_SUFFIX))
        raise FromLedgerError(f"--model {model!r}: no registered Keras model of that name; registered: "
                              f"{', '.join(known) or 'none'}")
    try:
        champion = client.get_model_version_by_alias(f"{model}{ONNX_SUFFIX}", CHAMPION_ALIAS)
    except MlflowException as error:
        raise FromLedgerError(f"--model {model!r}: no champion ({model}{ONNX_SUFFIX} has no alias "
                              f"{CHAMPION_ALIAS!r}); promote one first (`cellmfg registry promote --model {model}`)"
                              ) from error
    tags = dict(champion.tags or {})
    role = tags.get("role", "")
    if tags.get("keras_model_name") == model:
        transfer = client.get_model_version(model, tags["keras_model_version"])
    else:  # a zero-shot champion serves the base net: follow the newest transfer of `model` instead
        transfer = max(versions, key=lambda v: int(v.version))
    transfer_tags = dict(transfer.tags or {})
    if not transfer_tags.get("base_model_name") or not transfer_tags.get("base_model_version"):
        raise FromLedgerError(f"--model {model!r}: version {transfer.version} is not a transfer (no base model); "
                              "from-ledger retrains transfers from their base net")
    params = client.get_run(transfer.run_id).data.params
    return ParentChampion(
        model=model, onnx_version=str(champion.version), keras_version=str(transfer.version), role=role,
        base_name=transfer_tags["base_model_name"], base_version=transfer_tags["base_model_version"],
        dataset=params.get("dataset", transfer_tags.get("dataset", "")),
        target_column=params.get("target_column", ""),
        features=tuple(f for f in transfer_tags.get("features", "").split(",") if f),
        data_source=params.get("data_source", ""), data_sha256=params.get("data_sha256", ""))


def _versions(client: Any, model: str) -> list[Any]:
    return list(client.search_model_versions(f"name='{model}'"))


def original_data_path(parent: ParentChampion, given: Path | None) -> Path:
    """The champion's own training CSV (as logged, unchanged), or the one given with --data."""
    from cellmfg.dataio import file_sha256

    if given is not None:
        return given
    path = Path(parent.data_source)
    if not parent.data_source or not path.is_file():
        raise FromLedgerError(f"{parent.model} v{parent.keras_version} was trained on {parent.data_source or '?'}, "
                              "which is not here; give the original target rows with --data PATH")
    if file_sha256(path) != parent.data_sha256:
        raise FromLedgerError(f"{path} changed since {parent.model} v{parent.keras_version} was trained on it "
                              "(sha256 differs); give the original target rows with --data PATH")
    return path
