"""Reading a challenger's shadow predictions back beside the champion's answers and the lab's measurements.

A shadow row (predictions.shadow_of set) holds the challenger's prediction of a row the champion answered; the QC
lab's outcome is posted for the champion's row. `paired_outcomes` joins the three: one entry per measured
(row, target) that both versions scored, in order of the outcome's recording, ready for
`cellmfg.challenge.paired_comparison`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import aliased

from service.ledger.tables import OutcomeRow, OutputRow, PredictionRow


@dataclass(frozen=True)
class PairedOutcomes:
    """Measured rows both models predicted: the measured value, each model's prediction and the row's group."""

    measured: np.ndarray
    champion: np.ndarray
    challenger: np.ndarray
    groups: np.ndarray  # the client's group id (else its sample id), or None: the row is its own group

    def __len__(self) -> int:
        return len(self.measured)


def paired_outcomes(engine: Engine, model: str, challenger_version: str,
                    champion_version: str | None = None) -> PairedOutcomes:
    """Every measured (row, target) of `model` that `challenger_version` shadow-scored, with the champion's answer
    (only `champion_version`'s when given) and the latest measured value."""
    shadow_row, shadow_out, champion_out, champion_row = (
        aliased(PredictionRow), aliased(OutputRow), aliased(OutputRow), aliased(PredictionRow))
    latest = (select(OutcomeRow.prediction_id, OutcomeRow.target, func.max(OutcomeRow.revision).label("revision"))
              .group_by(OutcomeRow.prediction_id, OutcomeRow.target).subquery())
    query = (select(OutcomeRow.value, champion_out.value, shadow_out.value, champion_row.group_id,
                    champion_row.sample_id)
             .select_from(shadow_out)
             .join(shadow_row, shadow_row.prediction_id == shadow_out.prediction_id)
             .join(champion_out, (champion_out.prediction_id == shadow_row.shadow_of)
                   & (champion_out.target == shadow_out.target))
             .join(champion_row, champion_row.prediction_id == champion_out.prediction_id)
             .join(latest, (latest.c.prediction_id == champion_out.prediction_id)
                   & (latest.c.target == champion_out.target))
             .join(OutcomeRow, (OutcomeRow.prediction_id == latest.c.prediction_id)
                   & (OutcomeRow.target == latest.c.target) & (OutcomeRow.revision == latest.c.revision))
             .where(shadow_out.model_name == model, shadow_out.model_version == challenger_version,
                    champion_out.model_name == model, shadow_row.shadow_of.is_not(None))
             .order_by(OutcomeRow.recorded_at, OutcomeRow.id))
    if champion_version is not None:
        query = query.where(champion_out.model_version == champion_version)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return PairedOutcomes(
        measured=np.array([r[0] for r in rows], dtype=float),
        champion=np.array([r[1] for r in rows], dtype=float),
        challenger=np.array([r[2] for r in rows], dtype=float),
        groups=np.array([r[3] or r[4] for r in rows], dtype=object),
    )
