"""A simulated experiment campaign with the data generator as the lab: which way of choosing the next recipes
reaches a good transfer model with the fewest measured sheets?

Lab. The electrode generator (`datagen.electrode_process`, read at run time, so a recalibrated generator changes the
campaign without an edit here) is the lab. Each repetition draws one lab campaign of the target chemistry
(`generate_electrode(chemistry, data_seed + repeat)`); two of its sheets, at random, are what the lab starts with,
and all its other sheets are the repetition's fixed held-out set (the MAPE is measured on them every round, for
every strategy). Measuring a recipe makes a new sheet the way the generator makes one: the sheet's random effects
(slurry batch, coater run and drift, spring-back; the four sheets of a round are coated in a row and share the
drift), one calendered piece at the recipe's roll gap and speed, 2–4 punched discs (the generator's replicate
range) with the generator's punch, gauge and density scatter, its density cap with re-measurement, and gross errors
at its outlier rate (per disc here: a sheet is too small for the generator's per-dataset count).

Strategies, 8 rounds of 4 recipes, all in the chemistry's paper range (the box random and Sobol draw from too):
- `suggestion`: the criterion `POST /suggest` uses without a window (`service.design.suggest`): a scrambled Sobol design
  of the box plus its corners (2,048 points per roll-speed setting, the service's seed), rounded to a thousandth of each
  range, scored by the ensemble's relative spread σ/|p|, candidates the model answers identically counted once, and
  a greedy pass keeping the best 4 that differ from each other by a tenth of a range in some continuous parameter.
  The design, the duplicate removal and the greedy pass are `cellmfg.recipe_search`, which the service uses too
  (training may not import the service); tests/test_campaign.py checks the box and the picks against it. One
  difference is deliberate: the service searches the served model's *training* range, which after two sheets is a
  sliver of the paper range; here the box is the paper range for every strategy.
- `random`: uniform in the box, roll speed one of its two settings.
- `sobol`: one scrambled Sobol sequence per repetition over the box (roll speed as one more dimension, split at ½),
  four points a round in sequence order.

Model. Every round, for every strategy, the transfer is retrained on what has been measured so far exactly as
training does it (`fit.nested_nets`): adapter design, width and learning rate chosen by grouped inner validation
folds, then K members of the chosen configuration refit on everything measured (the ensemble; its spread is what
`suggestion` ranks by). The frozen base is pretrained once per campaign on the generator's graphite set
(`fit.nested_nets` on all its sheets, as the source net's selection). Random and Sobol recipes do not depend on the
model, so their eight rounds train in one stack (one split per round); suggestion rounds train one after another.

Summary. Per repetition: the MAPE curve against experiments (sheets measured: 2, 6, …, 34), the experiments needed
to reach the paper's transfer MAPE for that target (`cellmfg.paper.PAPER_MAPE`), and the area under the curve
(divided by its span: the campaign's mean MAPE). Paired differences (suggestion − random, suggestion − Sobol) over
repetitions with bootstrap intervals (`evaluate.paired_difference`, repetitions independent, Bonferroni over the
two comparisons of each figure).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import pandas as pd

from cellmfg.domain import DATASETS, Target, feature_columns
from cellmfg.paper import PAPER_MAPE
from cellmfg.recipe_search import (
    DISCRETE_FEATURES,
    design_units,
    distinct_answers,
    keep_apart,
    round_settings,
    setting_combinations,
    settings_decimals,
)
from training import evaluate, fit, nets
from training.config import TrainConfig

Strategy = Literal["suggestion", "random", "sobol"]
STRATEGIES: tuple[Strategy, ...] = ("suggestion", "random", "sobol")
COMPARED: tuple[Strategy, ...] = ("random", "sobol")  # suggestion − each of these

ELECTRODE_CHEMISTRIES = ("si_gra", "nmc")  # targets a campaign can run on (the GDL generator: see docs/campaign.md)


class CampaignInputError(ValueError):
    """Bad campaign input; the message names the option."""


# -------------------------------------------------------------------------------------------------------------
# The box recipes are chosen in


@dataclass(frozen=True)
class RecipeBox:
    """The chemistry's paper range as a search box (the layout of `service.design.search.SearchSpace`)."""

    columns: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    continuous: np.ndarray  # column indices of continuous parameters with a range
    discrete: dict[int, np.ndarray]  # column index -> its settings (roll speed: the two ends of its range)
    decimals: np.ndarray  # per column: decimals a suggested setting is rounded to (a thousandth of the range)

    @property
    def width(self) -> np.ndarray:
        return np.asarray(self.high[self.continuous] - self.low[self.continuous])

    def rows(self, units: np.ndarray, settings: tuple[float, ...]) -> np.ndarray:
        """Full rows from continuous coordinates in box units and one combination of the discrete settings."""
        x = np.repeat(self.low[None, :], len(units), axis=0)
        x[:, self.continuous] = self.low[self.continuous] + units * self.width
        for index, value in zip(self.discrete, settings, strict=True):
            x[:, index] = value
        return x

    def normalised(self, x: np.ndarray) -> np.ndarray:
        """The continuous parameters in box units: the diversity measure of `cellmfg.recipe_search.keep_apart`."""
        span = self.high[self.continuous] - self.low[self.continuous]
        return np.asarray((x[:, self.continuous] - self.low[self.continuous]) / np.where(span > 0, span, 1.0))

    def rounded(self, x: np.ndarray) -> np.ndarray:
        return round_settings(x, self.continuous, self.decimals, self.low, self.high)

    def combinations(self) -> list[tuple[float, ...]]:
        return setting_combinations(self.discrete)


def recipe_box(chemistry: str) -> RecipeBox:
    spec = DATASETS[chemistry]
    columns = tuple(feature_columns(spec.kind))
    low = np.asarray([spec.ranges[c][0] for c in columns], dtype=float)
    high = np.asarray([spec.ranges[c][1] for c in columns], dtype=float)
    discrete = {j: np.unique([low[j], high[j]]) for j, c in enumerate(columns)
                if c in DISCRETE_FEATURES and high[j] > low[j]}
    continuous = np.asarray([j for j in range(len(columns)) if j not in discrete and high[j] > low[j]], dtype=int)
    span = high - low
    decimals = settings_decimals(span)
    return RecipeBox(columns, low, high, continuous, discrete, decimals)


def suggestion_candidates(box: RecipeBox) -> np.ndarray:
    """Every candidate recipe /suggest scores (the same for every round: its Sobol seed is fixed)."""
    combos = box.combinations()
    units = design_units(len(box.continuous), len(combos))
    return box.rounded(np.concatenate([box.rows(units, combo) for combo in combos]))


def suggest_by_spread(box: RecipeBox, candidates: np.ndarray, p: np.ndarray, spread: np.ndarray, k: int
                      ) -> np.ndarray:
    """The k recipes /suggest picks without a window: largest relative spread, distinct answers, diverse."""
    relative = spread / np.maximum(np.abs(p), np.finfo(float).tiny)
    order = np.argsort(-relative, kind="stable")
    kept = distinct_answers(order, np.column_stack([p, spread]))
    chosen = keep_apart(kept, box.normalised(candidates[kept]), k)
    return np.asarray(candidates[chosen])


def random_recipes(box: RecipeBox, count: int, rng: np.random.Generator) -> np.ndarray:
    x = np.repeat(box.low[None, :], count, axis=0)
    x[:, box.continuous] = box.low[box.continuous] + rng.random((count, len(box.continuous))) * box.width
    for index, levels in box.discrete.items():
        x[:, index] = rng.choice(levels, size=count)
    return x


def sobol_recipes(box: RecipeBox, count: int, seed: int) -> np.ndarray:
    """The first `count` points of a scrambled Sobol sequence over the box (a discrete setting by splitting one
    more dimension evenly among its levels)."""
    from scipy.stats import qmc

    dimensions = len(box.continuous) + len(box.discrete)
    units = qmc.Sobol(dimensions, scramble=True, rng=seed).random_base2(max(1, math.ceil(math.log2(count))))[:count]
    x = np.repeat(box.low[None, :], count, axis=0)
    x[:, box.continuous] = box.low[box.continuous] + units[:, : len(box.continuous)] * box.width
    for offset, (index, levels) in enumerate(box.discrete.items()):
        position = np.minimum((units[:, len(box.continuous) + offset] * len(levels)).astype(int), len(levels) - 1)
        x[:, index] = levels[position]
    return x


# -------------------------------------------------------------------------------------------------------------
# The lab


@dataclass(frozen=True)
class Measured:
    """Measured discs: raw inputs, the target and each disc's sheet (its group)."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def plus(self, other: Measured) -> Measured:
        return Measured(np.vstack([self.x, other.x]), np.concatenate([self.y, other.y]),
                        np.concatenate([self.groups, other.groups]))

    def take(self, rows: np.ndarray) -> Measured:
        return Measured(self.x[rows], self.y[rows], self.groups[rows])


def measured_from_frame(frame: pd.DataFrame, target: Target) -> Measured:
    from cellmfg.dataio import GROUP_ID

    return Measured(frame[feature_columns("electrode")].to_numpy(dtype=float), frame[target.column].to_numpy(float),
                    frame[GROUP_ID].to_numpy(dtype=str))


def lab_campaign(chemistry: str, seed: int) -> pd.DataFrame:
    """A whole generated lab campaign of the chemistry (the generator's dataset for this seed)."""
    from datagen.electrode_process import generate_electrode

    return generate_electrode(chemistry, seed)


def measure_sheets(chemistry: str, target: Target, recipes: np.ndarray, rng: np.random.Generator, label: str
                   ) -> Measured:
    """Make and measure one new sheet per recipe, with the generator's random effects and disc scatter.

    The measurement of `datagen.electrode_process.generate_electrode` for sheets the lab chooses: the process model
    with freshly drawn sheet effects (`sheet_effects`), the generator's disc measurement (`measure_discs`), then
    gross errors at its rate.
    """
    from datagen import electrode_process as lab

    scatter = lab.SCATTER[chemistry]
    plan = lab.DESIGN_PLANS[chemistry]
    columns = list(lab.FEATURES)
    settings = pd.DataFrame(recipes, columns=feature_columns("electrode"))[columns]
    for column, decimals in lab.FEATURE_DECIMALS.items():
        settings[column] = settings[column].astype(float).round(decimals)  # what the lab writes down
    effects = lab.sheet_effects(chemistry, len(settings), rng)  # the generator's own draw of sheet effects
    low, high = plan.replicates
    discs = rng.integers(low, high + 1, size=len(settings))
    sheet = np.repeat(np.arange(len(settings)), discs)
    frame = settings.iloc[sheet].reset_index(drop=True)
    density, loading = lab.measure_discs(lab.process_terms(frame, chemistry, effects.take(sheet)), scatter, rng)
    rows = len(frame)
    # Gross errors per disc at the generator's rate (it places exactly that share in a whole dataset; a round of a
    # few sheets would otherwise always get one).
    low_error, high_error = scatter.outlier_rel_error
    for values, downward_only in ((density, True), (loading, False)):
        gross = np.flatnonzero(rng.random(rows) < scatter.outlier_fraction)
        signs = -np.ones(gross.size) if downward_only else np.where(rng.random(gross.size) < 0.5, -1.0, 1.0)
        values[gross] *= 1.0 + signs * rng.uniform(low_error, high_error, size=gross.size)
    measured = {"density_g_cm3": density, "mass_loading_mg_cm2": loading}
    y = np.round(measured[target.column], lab.TARGET_DECIMALS)
    groups = np.asarray([f"{label}-sheet{int(k) + 1:02d}" for k in sheet])
    return Measured(frame[feature_columns("electrode")].to_numpy(dtype=float), y, groups)


# -------------------------------------------------------------------------------------------------------------
# The model: frozen base + adapter ensemble, retrained as training does


@dataclass(frozen=True)
class FrozenBase:
    """The pretrained net, frozen once: its last hidden layer and prediction for any rows."""

    model: keras.Model
    body: keras.Model

    @staticmethod
    def of(model: keras.Model) -> FrozenBase:
        return FrozenBase(model, nets.frozen_body(model))

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, prediction = self.body(np.asarray(x, dtype="float32"))
        return np.asarray(hidden, dtype=float), np.asarray(prediction, dtype=float).reshape(-1)


def pretrain_base(config: TrainConfig, target: Target, data_seed: int) -> keras.Model:
    """The source net on the generator's graphite campaign: width and learning rate chosen by grouped inner
    validation folds (`fit.nested_nets`, the source net's selection), refit on every sheet."""
    from cellmfg.domain import feature_scaling

    frame = lab_campaign("graphite", data_seed)
    data = measured_from_frame(frame, target)
    centre, width = (np.asarray(v) for v in feature_scaling("electrode"))
    rows = np.arange(len(data))
    split = evaluate.Split(rows, np.asarray([], dtype=int),
                           evaluate.group_folds(rows, data.groups, config.inner_folds,
                                                np.random.default_rng(config.seed)), config.seed)
    net = config.net(target.task)
    grid = [fit.Choice("pretrained", lr, w) for lr in net.learning_rates for w in net.widths]
    run = fit.nested_nets(nets.scale_inputs(data.x, centre, width), data.y, [split], {"pretrained": grid},
                          net.hidden_layers, net.epochs, net.batch_size, config.seed)["pretrained"]
    assert run.layers is not None and run.input_mask is not None
    return nets.mlp_model(centre, width, run.input_mask.astype(float), run.layers, f"{target.task}_graphite_base")


@dataclass(frozen=True)
class Ensemble:
    """The adapter members of one retrain, for predicting rows outside its stack (the suggestion candidates)."""

    layers: list[list[tuple[np.ndarray, np.ndarray]]]
    skip_weights: list[float]

    def member_predictions(self, hidden: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        """[K, N]: each member on the frozen base's hidden layer and prediction (the stack's forward pass)."""
        out = []
        for (first, second), skip in zip(self.layers, self.skip_weights, strict=True):
            activations = np.maximum(hidden @ first[0] + first[1], 0.0)
            out.append((activations @ second[0])[:, 0] + second[1][0] + skip * zero_shot)
        return np.asarray(out)


@dataclass(frozen=True)
class Retrained:
    predictions: np.ndarray  # [trainings, rows]: the ensemble mean of each retrain on every row
    ensemble: Ensemble | None  # the first retrain's members (None for a single net)


def retrain(hidden: np.ndarray, zero_shot: np.ndarray, y: np.ndarray, groups: np.ndarray,
            trainings: list[np.ndarray], config: TrainConfig, seed: int) -> Retrained:
    """The transfer retrained on each of `trainings` (row sets of the same rows), in one stack per stage, exactly as
    `fit.target_task` selects and ensembles it (`fit.nested_nets`)."""
    adapter = config.adapter
    candidates = [fit.Choice(f"transfer_{kind}", lr, width) for kind in adapter.adapters
                  for lr in adapter.learning_rates for width in adapter.widths]
    none = np.asarray([], dtype=int)
    splits = [evaluate.Split(rows, none, evaluate.group_folds(rows, groups, config.inner_folds,
                                                              np.random.default_rng([seed, index])), seed)
              for index, rows in enumerate(trainings)]
    run = fit.nested_nets(hidden, y, splits, {"transfer": candidates}, 1, adapter.epochs,
                          config.net("density").batch_size, seed, skip=zero_shot,
                          skip_methods=("transfer_residual",), mask_constant=False, members=config.ensemble_members,
                          ensemble_families=("transfer",))["transfer"]
    ensemble = None
    if run.member_layers is not None and run.member_skip_weights is not None:
        ensemble = Ensemble(run.member_layers, run.member_skip_weights)
    return Retrained(run.predictions, ensemble)


# -------------------------------------------------------------------------------------------------------------
# One repetition


@dataclass(frozen=True)
class CampaignPlan:
    """What a campaign's summary needs: the target, the training config and the rounds."""

    chemistry: str
    target: Target
    config: TrainConfig
    rounds: int = 8
    batch: int = 4
    start_sheets: int = 2

    @property
    def experiments(self) -> np.ndarray:
        """Sheets measured at each model: the start, then after every round."""
        return self.start_sheets + self.batch * np.arange(self.rounds + 1)


@dataclass(frozen=True)
class CampaignSetup:
    """What every repetition of one target's campaign shares."""

    chemistry: str
    target: Target
    config: TrainConfig
    base: FrozenBase
    box: RecipeBox
    candidates: np.ndarray  # the suggestion candidates (fixed)
    candidate_features: tuple[np.ndarray, np.ndarray]  # the base's (hidden, prediction) on them
    rounds: int = 8
    batch: int = 4
    start_sheets: int = 2
    data_seed: int = 20250214

    @property
    def plan(self) -> CampaignPlan:
        return CampaignPlan(self.chemistry, self.target, self.config, self.rounds, self.batch, self.start_sheets)

    @property
    def experiments(self) -> np.ndarray:
        return self.plan.experiments


@dataclass(frozen=True)
class Repetition:
    repeat: int
    start_groups: tuple[str, ...]
    held_out_groups: tuple[str, ...]
    mape: dict[str, np.ndarray]  # strategy -> [rounds + 1] held-out MAPE (%), index 0 = the shared start model
    recipes: dict[str, np.ndarray]  # strategy -> [rounds * batch, features] recipes measured, in order
    measured_rows: dict[str, np.ndarray]  # strategy -> [rounds + 1] rows measured when each model was trained


def start_and_held_out(frame: pd.DataFrame, target: Target, sheets: int, rng: np.random.Generator
                       ) -> tuple[Measured, Measured]:
    """Two (or `sheets`) sheets of the lab's campaign to start from; every other sheet is held out."""
    data = measured_from_frame(frame, target)
    labels = np.unique(data.groups)
    if len(labels) < sheets + 2:
        raise CampaignInputError(f"--start-sheets: {sheets} asked, the campaign has {len(labels)} sheets")
    start = rng.choice(labels, size=sheets, replace=False)
    chosen = np.isin(data.groups, start)
    return data.take(np.flatnonzero(chosen)), data.take(np.flatnonzero(~chosen))


def _mape_of(predictions: np.ndarray, held_out: slice, y: np.ndarray) -> float:
    return evaluate.mape_pct(y[held_out], predictions[held_out])


def run_repetition(setup: CampaignSetup, repeat: int) -> Repetition:
    """One repetition: the same start sheets and held-out set for every strategy; per round each strategy's model
    retrained on everything it has measured, scored on the held-out set."""
    config, box = setup.config, setup.box
    seed = config.seed + 1000 * repeat
    frame = lab_campaign(setup.chemistry, setup.data_seed + repeat)
    start, held_out = start_and_held_out(frame, setup.target, setup.start_sheets, np.random.default_rng([seed, 0]))
    total = setup.rounds * setup.batch

    def lab_round(strategy: int, round_index: int, recipes: np.ndarray) -> Measured:
        rng = np.random.default_rng([seed, 1, strategy, round_index])
        return measure_sheets(setup.chemistry, setup.target, recipes, rng,
                              f"{setup.chemistry}-{STRATEGIES[strategy]}-round{round_index + 1}")

    def stacked(measured: Measured) -> tuple[Measured, np.ndarray, np.ndarray, slice]:
        """The held-out rows first, then the measured ones: one row set for the stack."""
        rows = held_out.plus(measured)
        hidden, zero_shot = setup.base.features(rows.x)
        return rows, hidden, zero_shot, slice(0, len(held_out))

    mape: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    counts: dict[str, list[int]] = {s: [] for s in STRATEGIES}
    recipes: dict[str, list[np.ndarray]] = {s: [] for s in STRATEGIES}
    hidden_c, zero_shot_c = setup.candidate_features

    def suggestion_model(measured: Measured, round_index: int) -> Ensemble | None:
        rows, hidden, zero_shot, test = stacked(measured)
        fitted = retrain(hidden, zero_shot, rows.y, rows.groups, [len(held_out) + np.arange(len(measured))],
                         config, seed + 7 + round_index)
        mape["suggestion"].append(_mape_of(fitted.predictions[0], test, rows.y))
        counts["suggestion"].append(len(measured))
        return fitted.ensemble

    # Round 0: one model on the start sheets, shared by every strategy's curve (the pairing starts there).
    ensemble = suggestion_model(start, 0)
    for strategy in COMPARED:
        mape[strategy].append(mape["suggestion"][0])
        counts[strategy].append(len(start))

    # Model-free strategies: all recipes known up front, measured round by round, every round's model in one stack.
    fixed_recipes = {"random": random_recipes(box, total, np.random.default_rng([seed, 2])),
                     "sobol": sobol_recipes(box, total, seed)}
    for strategy in COMPARED:
        measured = start
        trainings = []
        for r in range(setup.rounds):
            batch = fixed_recipes[strategy][r * setup.batch:(r + 1) * setup.batch]
            recipes[strategy].append(batch)
            measured = measured.plus(lab_round(STRATEGIES.index(strategy), r, batch))
            trainings.append(len(held_out) + np.arange(len(measured)))
        rows, hidden, zero_shot, test = stacked(measured)
        fitted = retrain(hidden, zero_shot, rows.y, rows.groups, trainings, config, seed + 1)
        mape[strategy] += [_mape_of(p, test, rows.y) for p in fitted.predictions]
        counts[strategy] += [len(t) for t in trainings]

    # Suggestion: each round's recipes come from the previous round's ensemble, as /suggest would pick them.
    measured = start
    for r in range(setup.rounds):
        if ensemble is None:
            raise CampaignInputError("suggestion ranks by the ensemble spread; it needs at least 2 members")
        members = ensemble.member_predictions(hidden_c, zero_shot_c)
        batch = suggest_by_spread(box, setup.candidates, members.mean(axis=0), nets.ensemble_spread(members),
                                  setup.batch)
        recipes["suggestion"].append(batch)
        measured = measured.plus(lab_round(0, r, batch))
        ensemble = suggestion_model(measured, r + 1)
    return Repetition(repeat, tuple(sorted(set(start.groups.tolist()))), tuple(sorted(set(held_out.groups.tolist()))),
                      {s: np.asarray(v) for s, v in mape.items()},
                      {s: np.vstack(v) if v else np.empty((0, len(box.columns))) for s, v in recipes.items()},
                      {s: np.asarray(v) for s, v in counts.items()})


def prepare(chemistry: str, target: Target, config: TrainConfig, rounds: int, data_seed: int,
            batch: int = 4, start_sheets: int = 2) -> CampaignSetup:
    """Everything the repetitions share: the pretrained base (trained once), the box, the candidates."""
    if chemistry not in ELECTRODE_CHEMISTRIES:
        raise CampaignInputError(f"--chemistry: {chemistry!r}; a campaign runs on {', '.join(ELECTRODE_CHEMISTRIES)}")
    if rounds < 1:
        raise CampaignInputError(f"--rounds: {rounds}; at least 1")
    if config.ensemble_members < 2:
        raise CampaignInputError("the suggestion strategy ranks by the ensemble spread: at least 2 members")
    nets.single_threaded()
    base = FrozenBase.of(pretrain_base(config, target, data_seed))
    box = recipe_box(chemistry)
    candidates = suggestion_candidates(box)
    return CampaignSetup(chemistry, target, config, base, box, candidates, base.features(candidates), rounds, batch,
                         start_sheets, data_seed)


def run_campaign(setup: CampaignSetup, repeats: int, progress: Callable[[list[Repetition]], None] = lambda _: None,
                 first: int = 0) -> list[Repetition]:
    """Repetitions `first` … `first + repeats − 1` (each is seeded by its index alone, so a campaign split over
    processes gives the repetitions a single run would); `progress` sees the list after each one."""
    out: list[Repetition] = []
    for repeat in range(first, first + repeats):
        out.append(run_repetition(setup, repeat))
        progress(out)
    return out


# -------------------------------------------------------------------------------------------------------------
# Summary


def paper_goal(chemistry: str, target: Target) -> float:
    """The paper's transfer MAPE for this target (%)."""
    return PAPER_MAPE[(target.task, chemistry, "transfer_paper")]


def curves(repetitions: list[Repetition]) -> dict[str, np.ndarray]:
    """strategy -> [repeats, rounds + 1] MAPE."""
    return {s: np.stack([r.mape[s] for r in repetitions]) for s in STRATEGIES}


def experiments_to_reach(curve: np.ndarray, experiments: np.ndarray, goal: float) -> np.ndarray:
    """Per repetition: the sheets measured when the MAPE first is at or below `goal`; NaN when never."""
    reached = curve <= goal
    first = np.argmax(reached, axis=1)
    return np.where(reached.any(axis=1), experiments[first].astype(float), np.nan)


def area_under_curve(curve: np.ndarray, experiments: np.ndarray) -> np.ndarray:
    """Per repetition: the trapezoid area under MAPE against experiments, divided by the span (a mean MAPE, %)."""
    steps = np.diff(experiments.astype(float))
    area = np.sum((curve[:, 1:] + curve[:, :-1]) / 2.0 * steps, axis=1)
    return np.asarray(area / (experiments[-1] - experiments[0]))


@dataclass
class Summary:
    table: pd.DataFrame  # one row per strategy
    comparisons: pd.DataFrame  # one row per (figure, compared strategy)
    per_round: pd.DataFrame  # one row per (strategy, experiments)
    goal: float
    censored_at: int  # experiments counted for a repetition that never reaches the goal (in the paired figure)
    notes: list[str] = field(default_factory=list)


def summarise(setup: CampaignPlan, repetitions: list[Repetition]) -> Summary:
    experiments = setup.experiments
    goal = paper_goal(setup.chemistry, setup.target)
    censored = int(experiments[-1] + setup.batch)
    by = curves(repetitions)
    reach = {s: experiments_to_reach(by[s], experiments, goal) for s in STRATEGIES}
    auc = {s: area_under_curve(by[s], experiments) for s in STRATEGIES}
    rows = []
    for s in STRATEGIES:
        reached = reach[s][np.isfinite(reach[s])]
        mean_curve = by[s].mean(axis=0)
        mean_reach = experiments_to_reach(mean_curve[None, :], experiments, goal)[0]
        rows.append({"strategy": s, "repeats": len(repetitions), "final_mape_pct": float(mean_curve[-1]),
                     "final_mape_sd": float(by[s][:, -1].std(ddof=1)) if len(repetitions) > 1 else 0.0,
                     "auc_mean_mape_pct": float(auc[s].mean()), "reached_share": float(len(reached) / len(repetitions)),
                     "median_experiments_to_goal": float(np.median(np.where(np.isfinite(reach[s]), reach[s],
                                                                             censored))),
                     "mean_curve_experiments_to_goal": float(mean_reach)})
    level = evaluate.bonferroni_level(setup.config.family_confidence, len(COMPARED))
    comparisons = []
    for figure, values in (("experiments_to_goal", {s: np.where(np.isfinite(reach[s]), reach[s], censored)
                                                    for s in STRATEGIES}),
                           ("auc_mean_mape_pct", auc)):
        for other in COMPARED:
            paired = evaluate.paired_difference(values["suggestion"], values[other], setup.config.seed, 0.0,
                                                setup.config.bootstrap_resamples, level)
            comparisons.append({"figure": figure, "comparison": f"suggestion − {other}", "mean": paired.mean,
                                "low": paired.low, "high": paired.high, "level": level,
                                "verdict": _words(paired.verdict)})
    per_round = pd.DataFrame([{"strategy": s, "round": r, "experiments": int(experiments[r]),
                               "mape_pct": float(by[s][:, r].mean()),
                               "mape_sd": float(by[s][:, r].std(ddof=1)) if len(repetitions) > 1 else 0.0,
                               "reached_share": float(np.mean(by[s][:, r] <= goal))}
                              for s in STRATEGIES for r in range(len(experiments))])
    return Summary(pd.DataFrame(rows), pd.DataFrame(comparisons), per_round, goal, censored)


def records(frame: pd.DataFrame) -> list[Any]:
    """Rows as attribute records (`row.column`), typed loosely: the frames are built in this module."""
    from types import SimpleNamespace

    return [SimpleNamespace(**{str(k): v for k, v in row.items()}) for row in frame.to_dict("records")]


def _words(verdict: evaluate.Verdict) -> str:
    # Lower is better for both figures, so "wins" means suggestion needs fewer sheets / has the lower curve.
    return {"wins": "suggestion better", "loses": "suggestion worse",
            "indistinguishable": "suggestion does not beat it"}[verdict]


def markdown(setup: CampaignPlan, summary: Summary) -> str:
    name = f"{setup.chemistry} {setup.target.task}"
    experiments = setup.experiments
    lines = [f"#### {name}: paper transfer MAPE {summary.goal:g} %", "",
             "| strategy | final MAPE % (34 sheets) | mean MAPE over the campaign % (AUC / span) | repetitions "
             f"reaching {summary.goal:g} % | median sheets to reach it | sheets where the mean curve reaches it |",
             "|---|---|---|---|---|---|"]
    lines[2] = lines[2].replace("(34 sheets)", f"({int(experiments[-1])} sheets)")
    for row in records(summary.table):
        median = (f"{row.median_experiments_to_goal:g}" if row.median_experiments_to_goal < summary.censored_at
                  else f"not reached within {setup.rounds} rounds")
        mean_curve = (f"{row.mean_curve_experiments_to_goal:g}" if np.isfinite(row.mean_curve_experiments_to_goal)
                      else f"not reached within {setup.rounds} rounds")
        lines.append(f"| {row.strategy} | {row.final_mape_pct:.2f} ± {row.final_mape_sd:.2f} | "
                     f"{row.auc_mean_mape_pct:.2f} | {100 * row.reached_share:.0f} % | {median} | {mean_curve} |")
    lines += ["", "| figure | comparison | mean difference | interval | verdict |", "|---|---|---|---|---|"]
    for row in records(summary.comparisons):
        unit = "sheets" if row.figure == "experiments_to_goal" else "MAPE points"
        label = ("sheets to reach the paper's MAPE" if row.figure == "experiments_to_goal"
                 else "mean MAPE over the campaign (AUC)")
        lines.append(f"| {label} | {row.comparison} | {row.mean:+.2f} {unit} | [{row.low:+.2f}, {row.high:+.2f}] "
                     f"({100 * row.level:.1f} %) | {row.verdict} |")
    lines += ["", "| sheets measured | " + " | ".join(f"{s} MAPE %" for s in STRATEGIES) + " |",
              "|---|" + "---|" * len(STRATEGIES)]
    for r, count in enumerate(experiments):
        at = {row.strategy: row for row in records(summary.per_round[summary.per_round["round"] == r])}
        lines.append(f"| {int(count)} | " + " | ".join(f"{at[s].mape_pct:.2f} ± {at[s].mape_sd:.2f}"
                                                      for s in STRATEGIES) + " |")
    return "\n".join(lines) + "\n"


def plot(panels: list[tuple[CampaignPlan, Summary]], path: Path) -> Path:
    """MAPE against sheets measured, one panel per target, ± 1 SD bands, the paper's transfer MAPE dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes_list = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False)
    for axes, (setup, summary) in zip(axes_list[0], panels, strict=True):
        for strategy in STRATEGIES:
            block = summary.per_round[summary.per_round["strategy"] == strategy]
            axes.plot(block["experiments"], block["mape_pct"], "o-", markersize=3, label=strategy)
            axes.fill_between(block["experiments"], block["mape_pct"] - block["mape_sd"],
                              block["mape_pct"] + block["mape_sd"], alpha=0.12)
        axes.axhline(summary.goal, color="grey", linestyle="--", linewidth=1, label="paper transfer MAPE")
        axes.set(xlabel="sheets measured", ylabel="held-out MAPE (%)",
                 title=f"{setup.chemistry} {setup.target.task}")
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def long_table(setup: CampaignPlan, repetitions: list[Repetition]) -> pd.DataFrame:
    """Every measured point: one row per (strategy, repetition, round) with its sheets, rows and held-out MAPE."""
    goal = paper_goal(setup.chemistry, setup.target)
    return pd.DataFrame([{"chemistry": setup.chemistry, "target": setup.target.task, "strategy": s,
                          "repeat": rep.repeat, "round": r, "sheets": int(setup.experiments[r]),
                          "rows": int(rep.measured_rows[s][r]), "held_out_groups": len(rep.held_out_groups),
                          "mape_pct": float(rep.mape[s][r]), "paper_transfer_mape_pct": goal}
                         for rep in repetitions for s in STRATEGIES for r in range(len(setup.experiments))])


def log_mlflow(panels: list[tuple[CampaignPlan, Summary]], folder: Path, params: dict[str, object]) -> str:
    """One MLflow run in the `campaign` experiment: the parameters, each strategy's mean curve as stepped metrics
    (step = sheets measured) and the files of `folder` as artifacts. Returns the run id."""
    import mlflow

    from training import tracking

    tracking.configure()
    tracking.use_experiment("campaign")
    with tracking.run("campaign", tags={"study": "campaign"}) as active:
        mlflow.log_params({key: str(value) for key, value in params.items()})
        for setup, summary in panels:
            prefix = f"{setup.chemistry}_{setup.target.task}"
            for row in records(summary.per_round):
                mlflow.log_metric(f"{prefix}_{row.strategy}_mape_pct", float(row.mape_pct), step=int(row.experiments))
            for row in records(summary.table):
                mlflow.log_metric(f"{prefix}_{row.strategy}_auc_mean_mape_pct", float(row.auc_mean_mape_pct))
        mlflow.log_artifacts(str(folder), "campaign")
        return str(active.info.run_id)


def from_table(table: pd.DataFrame, config: TrainConfig) -> list[tuple[CampaignPlan, list[Repetition]]]:
    """The curves of `long_table` files read back, one (plan, repetitions) per target, for summarising runs made
    in separate processes (the repetitions carry their curves and row counts only)."""
    from cellmfg.domain import TARGETS

    out = []
    for (chemistry, task), block in table.groupby(["chemistry", "target"], sort=False):
        sheets = np.sort(block["sheets"].unique())
        plan = CampaignPlan(str(chemistry), TARGETS[str(task)], config, rounds=len(sheets) - 1,
                            batch=int(sheets[1] - sheets[0]), start_sheets=int(sheets[0]))
        repetitions = []
        for repeat in sorted(block["repeat"].unique().tolist()):
            rows = block[block["repeat"] == repeat]
            ordered = {s: rows[rows["strategy"] == s].sort_values("round") for s in STRATEGIES}
            repetitions.append(Repetition(
                int(repeat), (), (), {s: ordered[s]["mape_pct"].to_numpy(float) for s in STRATEGIES},
                {s: np.empty((0, len(feature_columns("electrode")))) for s in STRATEGIES},
                {s: ordered[s]["rows"].to_numpy(int) for s in STRATEGIES}))
        out.append((plan, repetitions))
    return out
