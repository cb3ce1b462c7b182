"""The evaluation protocol of one task: every method on the same grouped outer splits, choices made by nested
grouped validation, test rows read once for the report.

Per outer split (the first one's models are the registered ones):
- net methods choose their width and learning rate (and, for transfer, the adapter design) by the out-of-fold
  MAPE of grouped inner validation folds of the training part, then refit the chosen configuration on the whole
  training part;
- the other methods fit on the whole training part (zero-shot fits nothing);
- every method also predicts each inner validation fold from a model fitted without it (for the nets, the
  configuration chosen on the other folds): these out-of-fold residuals calibrate the conformal interval of the
  split at group level (`evaluate` explains the scheme) and give the zero-shot gate a figure no choice touched;
- every method predicts the test part; its MAPE and its conformal coverage and width are measured there.

Ensembles (`TrainConfig.ensemble_members` K > 1): the transfer, scratch and pooled nets are K nets of the chosen
configuration, differing in initial weights and batch order; their mean is the prediction and their standard
deviation (the spread) scales a second, normalised conformal interval, calibrated and measured like the constant one;
a stated rule on the calibration rows decides which one is served (`measure_spread`, `evaluate.calibrate_spread`).
The registered transfer is the ensemble, one graph: the frozen base once, the K adapters fused
(`nets.transfer_ensemble_model`).

Source tasks: the pretrained net (`pretrained`) against the baselines, plus a source-size learning curve.
Target tasks: `transfer` (the adapter design validation chose), `transfer_paper` (the paper's adapter),
`transfer_residual` (ours), `zero_shot`, `zero_shot_recalibrated` (a·ŷ + b on the training part), `pooled`
(one net on source + target rows with a dataset indicator), `scratch` and the baselines.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd

from cellmfg.dataio import LoadedData, row_groups
from cellmfg.domain import Kind, Target, feature_columns, feature_scaling
from training import evaluate, nets
from training.config import TrainConfig

TRANSFER_METHODS = ("transfer", "transfer_paper", "transfer_residual")
TARGET_METHODS = (*TRANSFER_METHODS, "zero_shot", "zero_shot_recalibrated", "pooled", "scratch",
                  *evaluate.BASELINES)
SOURCE_METHODS = ("pretrained", *evaluate.BASELINES)


@dataclass(frozen=True)
class Dataset:
    """A validated dataset ready for training: inputs, one target and the group of every row, plus provenance."""

    name: str
    kind: Kind
    frame: pd.DataFrame
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    target: Target
    sha256: str
    source: str

    @property
    def feature_names(self) -> list[str]:
        return feature_columns(self.kind)

    @property
    def scaled(self) -> np.ndarray:
        centre, width = feature_scaling(self.kind)
        return nets.scale_inputs(self.x, np.asarray(centre), np.asarray(width))


def prepare(loaded: LoadedData, target: Target, name: str) -> Dataset:
    """Pure: frame in, feature matrix, target vector and groups out (rows with a blank target are dropped)."""
    if target.column not in loaded.frame.columns:
        raise ValueError(f"{loaded.source}: no target column {target.column!r}")
    frame = loaded.frame[loaded.frame[target.column].notna()].reset_index(drop=True)
    x = frame[feature_columns(loaded.kind)].to_numpy(dtype="float64")
    y = frame[target.column].to_numpy(dtype="float64")
    return Dataset(name, loaded.kind, frame, x, y, row_groups(frame, loaded.kind), target, loaded.sha256,
                   loaded.source)


@dataclass(frozen=True)
class Choice:
    """One candidate configuration of a net method."""

    method: str
    learning_rate: float
    width: int

    def label(self) -> str:
        return f"{self.method} lr={self.learning_rate:g} width={self.width}"


@dataclass
class MethodRun:
    """One method on every outer split: predictions of each split's model on every row, and what was chosen."""

    method: str
    predictions: np.ndarray  # [splits, rows]
    choices: list[Choice | None]
    validation_mape: np.ndarray  # [splits]: out-of-fold MAPE of the chosen configuration (NaN: nothing chosen)
    train_loss: np.ndarray | None = None  # first split's final net, per epoch
    validation_loss: np.ndarray | None = None  # first split's chosen configuration, mean over inner folds
    layers: list[tuple[np.ndarray, np.ndarray]] | None = None  # first split's net
    skip_weight: float = 0.0
    input_mask: np.ndarray | None = None
    extra_predictions: np.ndarray | None = None  # see `nested_nets(extra_train=...)`
    # [splits, rows]: each training row predicted by a model fitted without its inner fold (for the nets, the
    # configuration chosen on the other folds: `evaluate.cross_selected_out_of_fold`); NaN outside the training part
    out_of_fold: np.ndarray | None = None
    # Ensembles (`members` > 1): `predictions` and `out_of_fold` are the members' means, these their standard
    # deviations ([splits, rows], NaN where out_of_fold is); the first split's members' weights for the served graph
    members: int = 1
    spread: np.ndarray | None = None
    out_of_fold_spread: np.ndarray | None = None
    member_layers: list[list[tuple[np.ndarray, np.ndarray]]] | None = None
    member_skip_weights: list[float] | None = None

    def selection_free_mape(self, y: np.ndarray, splits: list[evaluate.Split]) -> np.ndarray:
        """Per split: MAPE of the out-of-fold predictions on the training part (what the zero-shot gate compares)."""
        if self.out_of_fold is None:
            return np.full(len(splits), np.nan)
        return np.asarray([evaluate.mape_pct(y[s.train], self.out_of_fold[i, s.train]) for i, s in enumerate(splits)])


@dataclass
class Measured:
    """A method's held-out figures per split; `quantiles` are the conformal quantiles calibrated on each split's
    out-of-fold training residuals (the first is the one served with the registered net)."""

    test_mape: np.ndarray
    coverage: np.ndarray
    relative_width: np.ndarray
    coverage_rows: int
    quantiles: np.ndarray
    group_coverage: np.ndarray  # share of test groups with every row inside its interval
    calibration_groups: int  # groups the first split's quantile was calibrated on
    # Ensembles only (else None): per split, the spread-scaled (normalised) interval's held-out figures, whether the
    # rule (`evaluate.SpreadCalibration`) chose it, and the figures of the interval the rule chose; the first
    # split's calibration is the one served
    spread_coverage: np.ndarray | None = None
    spread_relative_width: np.ndarray | None = None
    uses_spread: np.ndarray | None = None
    chosen_coverage: np.ndarray | None = None
    chosen_relative_width: np.ndarray | None = None
    calibration: evaluate.SpreadCalibration | None = None


@dataclass
class TaskOutcome:
    """Everything one task's protocol produced, before logging."""

    data: Dataset
    role: str  # pretrained | transfer
    main: str  # the registered method: pretrained or transfer
    splits: list[evaluate.Split]
    runs: dict[str, MethodRun]
    measured: dict[str, Measured]
    paired: dict[str, evaluate.PairedDifference]
    model: keras.Model
    input_mask: np.ndarray  # the registered net's (its base's, for transfer) input use: False = ignored
    learning_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def first(self) -> evaluate.Split:
        return self.splits[0]

    def chosen(self) -> Choice:
        choice = self.runs[self.main].choices[0]
        assert choice is not None
        return choice


# -------------------------------------------------------------------------------------------------------------
# Nets: nested selection, then refit


@dataclass(frozen=True)
class _Job:
    train: np.ndarray
    validation: np.ndarray
    choice: Choice
    skip: bool


def _stack(inputs: np.ndarray, y: np.ndarray, jobs: list[_Job], hidden_layers: int, epochs: int, batch_size: int,
           seed: int, skip: np.ndarray | None, mask_constant: bool) -> nets.TrainedStack:
    count, rows = len(jobs), len(y)
    train_mask = np.zeros((count, rows), dtype=bool)
    validation_mask = np.zeros((count, rows), dtype=bool)
    input_mask = np.ones((count, inputs.shape[1]))
    bias = np.zeros(count)
    for index, job in enumerate(jobs):
        train_mask[index, job.train] = True
        validation_mask[index, job.validation] = True
        if mask_constant:
            input_mask[index] = ~nets.constant_columns(inputs[job.train])
        offset = skip[job.train] if (job.skip and skip is not None) else 0.0
        bias[index] = float(np.mean(y[job.train] - offset))
    spec = nets.StackSpec(
        inputs=inputs, y=y, train_mask=train_mask, validation_mask=validation_mask, input_mask=input_mask,
        widths=np.asarray([j.choice.width for j in jobs]), learning_rates=np.asarray([j.choice.learning_rate
                                                                                      for j in jobs]),
        output_bias=bias, hidden_layers=hidden_layers, epochs=epochs, batch_size=batch_size, seed=seed,
        skip=skip, skip_on=np.asarray([j.skip for j in jobs]) if skip is not None else None)
    return nets.train_stack(spec)


def nested_nets(inputs: np.ndarray, y: np.ndarray, splits: list[evaluate.Split], families: dict[str, list[Choice]],
                hidden_layers: int, epochs: int, batch_size: int, seed: int, skip: np.ndarray | None = None,
                skip_methods: tuple[str, ...] = (), mask_constant: bool = True,
                extra_train: list[np.ndarray] | None = None, members: int = 1,
                ensemble_families: tuple[str, ...] = ()) -> dict[str, MethodRun]:
    """Nested selection and refit for every family (method name → its candidates) on every split, in two stacks.

    Families may share candidates (`transfer` chooses among both adapters' candidates): each is trained once.
    `extra_train`: further training-row sets fitted with the first family's first-split choice in the refit stack
    (the learning curve), returned as `MethodRun.extra_predictions`.
    `members` > 1 turns each family of `ensemble_families` into an ensemble (`_ensembles`).
    """
    unique = list(dict.fromkeys(c for cs in families.values() for c in cs))
    candidates = [(s, c) for s in range(len(splits)) for c in unique]
    jobs = [_Job(split.fold_train(f), split.folds[f], choice, choice.method in skip_methods)
            for s, choice in candidates for split in [splits[s]] for f in range(len(split.folds))]
    first = _stack(inputs, y, jobs, hidden_layers, epochs, batch_size, seed, skip, mask_constant)
    # Out-of-fold predictions of each (split, candidate) on its training part → validation MAPE.
    scores: dict[tuple[int, Choice], float] = {}
    curves: dict[tuple[int, Choice], np.ndarray] = {}
    predicted: dict[tuple[int, Choice], np.ndarray] = {}
    position = 0
    for s, choice in candidates:
        split = splits[s]
        out_of_fold = np.full(len(y), np.nan)
        fold_curves = []
        for fold in split.folds:
            out_of_fold[fold] = first.predictions[position, fold]
            fold_curves.append(first.validation_loss[position])
            position += 1
        scores[(s, choice)] = evaluate.mape_pct(y[split.train], out_of_fold[split.train])
        curves[(s, choice)] = np.mean(fold_curves, axis=0)
        predicted[(s, choice)] = out_of_fold
    picks = {(s, family): min(cs, key=lambda c: (scores[(s, c)], c.learning_rate, c.width))
             for s in range(len(splits)) for family, cs in families.items()}
    refits = sorted({(s, pick) for (s, _), pick in picks.items()}, key=lambda item: (item[0], item[1].label()))
    first_family = next(iter(families))
    extras = [_Job(rows, np.asarray([], dtype=int), picks[(0, first_family)], False) for rows in extra_train or []]
    second = _stack(inputs, y, [_Job(splits[s].train, np.asarray([], dtype=int), c, c.method in skip_methods)
                                for s, c in refits] + extras,
                    hidden_layers, epochs, batch_size, seed + 1, skip, mask_constant)
    index_of = {item: i for i, item in enumerate(refits)}
    out: dict[str, MethodRun] = {}
    cross: dict[str, list[tuple[np.ndarray, list[Choice]]]] = {}
    for family, family_candidates in families.items():
        ordered = sorted(family_candidates, key=lambda c: (c.learning_rate, c.width))  # the picks' tie-break
        selected = [evaluate.cross_selected_out_of_fold(y, split.folds, np.stack([predicted[(s, c)]
                                                                                  for c in ordered]))
                    for s, split in enumerate(splits)]
        cross[family] = [(oof, [ordered[int(p)] for p in fold_picks]) for oof, fold_picks in selected]
    for family in families:
        chosen = [picks[(s, family)] for s in range(len(splits))]
        selection_free = np.stack([oof for oof, _ in cross[family]])
        positions = [index_of[(s, c)] for s, c in enumerate(chosen)]
        first_job = positions[0]
        out[family] = MethodRun(
            family, second.predictions[positions], list(chosen),
            np.asarray([scores[(s, c)] for s, c in enumerate(chosen)]),
            train_loss=second.train_loss[first_job], validation_loss=curves[(0, chosen[0])],
            layers=second.layer_weights(first_job), skip_weight=float(second.skip_weight[first_job]),
            input_mask=(~nets.constant_columns(inputs[splits[0].train])) if mask_constant else None,
            extra_predictions=second.predictions[len(refits):] if family == first_family else None,
            out_of_fold=selection_free)
    ensembled = [f for f in families if f in ensemble_families]
    if members > 1 and ensembled:
        out.update(_ensembles(inputs, y, splits, {f: out[f] for f in ensembled}, cross, members, hidden_layers,
                              epochs, batch_size, seed + 2, skip, skip_methods, mask_constant))
    return out


def _ensembles(inputs: np.ndarray, y: np.ndarray, splits: list[evaluate.Split], runs: dict[str, MethodRun],
               cross: dict[str, list[tuple[np.ndarray, list[Choice]]]], members: int, hidden_layers: int,
               epochs: int, batch_size: int, seed: int, skip: np.ndarray | None, skip_methods: tuple[str, ...],
               mask_constant: bool) -> dict[str, MethodRun]:
    """Each run's chosen configurations refit `members` − 1 more times (other initial weights and batch orders: each
    net of a stack draws its own), in one stack: per split on its training part (beside the refit already trained,
    member 0), and per inner fold with the configuration chosen on the other folds (beside the fold model behind
    the run's out-of-fold predictions), so the ensemble's out-of-fold mean and spread are as untouched by choices
    and calibration rows as the single net's were."""
    extra = members - 1
    none = np.asarray([], dtype=int)
    jobs: list[_Job] = []
    starts: dict[str, int] = {}
    for family, run in runs.items():
        starts[family] = len(jobs)
        for split, choice in zip(splits, run.choices, strict=True):
            assert choice is not None
            jobs += [_Job(split.train, none, choice, choice.method in skip_methods)] * extra
        for split, (_, fold_choices) in zip(splits, cross[family], strict=True):
            for fold, choice in enumerate(fold_choices):
                jobs += [_Job(split.fold_train(fold), split.folds[fold], choice, choice.method in skip_methods)] * extra
    trained = _stack(inputs, y, jobs, hidden_layers, epochs, batch_size, seed, skip, mask_constant)
    out: dict[str, MethodRun] = {}
    for family, run in runs.items():
        start = starts[family]
        refits = [run.predictions] + [np.stack([trained.predictions[start + s * extra + m] for s in range(len(splits))])
                                      for m in range(extra)]
        assert run.out_of_fold is not None and run.layers is not None
        held_out = [run.out_of_fold] + [np.full_like(run.out_of_fold, np.nan) for _ in range(extra)]
        job = start + len(splits) * extra
        for s, split in enumerate(splits):
            for fold_rows in split.folds:
                for m in range(extra):
                    held_out[1 + m][s, fold_rows] = trained.predictions[job + m, fold_rows]
                job += extra
        refit_members, fold_members = np.stack(refits), np.stack(held_out)
        out[family] = dataclasses.replace(
            run, predictions=refit_members.mean(axis=0), out_of_fold=fold_members.mean(axis=0), members=members,
            spread=nets.ensemble_spread(refit_members), out_of_fold_spread=nets.ensemble_spread(fold_members),
            member_layers=[run.layers] + [trained.layer_weights(start + m) for m in range(extra)],
            member_skip_weights=[run.skip_weight] + [float(trained.skip_weight[start + m]) for m in range(extra)])
    return out


def _grid(method: str, widths: tuple[int, ...], learning_rates: tuple[float, ...]) -> list[Choice]:
    return [Choice(method, lr, w) for lr in learning_rates for w in widths]


# -------------------------------------------------------------------------------------------------------------
# Baselines and measurement


def out_of_fold(splits: list[evaluate.Split], rows: int, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
                ) -> np.ndarray:
    """[splits, rows]: each inner fold predicted by `fit_predict(train_rows, predict_rows)` fitted on the other
    folds; NaN outside the training parts."""
    out = np.full((len(splits), rows), np.nan)
    for index, split in enumerate(splits):
        for fold_index, fold in enumerate(split.folds):
            out[index, fold] = fit_predict(split.fold_train(fold_index), fold)
    return out


def _baselines(data: Dataset, splits: list[evaluate.Split], config: TrainConfig) -> dict[str, MethodRun]:
    out = {}
    for name in evaluate.BASELINES:
        predictions = np.stack([
            np.asarray(evaluate.fit_baseline(name, data.x[s.train], data.y[s.train], s.seed,
                                             config.random_forest_trees).predict(data.x), dtype=float)
            for s in splits])

        def fit_predict(train: np.ndarray, rows: np.ndarray, name: str = name) -> np.ndarray:
            model = evaluate.fit_baseline(name, data.x[train], data.y[train], config.seed,
                                          config.random_forest_trees)
            return np.asarray(model.predict(data.x[rows]), dtype=float)

        out[name] = MethodRun(name, predictions, [None] * len(splits), np.full(len(splits), np.nan),
                              out_of_fold=out_of_fold(splits, len(data.y), fit_predict))
    return out


def measure(data: Dataset, splits: list[evaluate.Split], run: MethodRun, coverage: float) -> Measured:
    """Test MAPE per split, and the split's conformal interval (calibrated at group level on the out-of-fold
    residuals of its training part) measured on its test groups."""
    if run.out_of_fold is None:
        raise ValueError(f"{run.method}: no out-of-fold predictions to calibrate its intervals on")
    quantity = data.target.quantity
    mapes, covered, whole, widths, quantiles, rows = [], [], [], [], [], 0
    for index, split in enumerate(splits):
        prediction = run.predictions[index]
        mapes.append(evaluate.mape_pct(data.y[split.test], prediction[split.test]))
        residuals = evaluate.relative_residuals(data.y[split.train], run.out_of_fold[index, split.train])
        quantile = evaluate.group_conformal_quantile(residuals, data.groups[split.train], coverage)
        result = evaluate.held_out_coverage(data.y[split.test], prediction[split.test], data.groups[split.test],
                                            quantile, quantity.physical_min, quantity.physical_max)
        quantiles.append(quantile)
        covered.append(result.coverage)
        whole.append(result.group_coverage)
        widths.append(result.mean_relative_width)
        rows += result.rows
    measured = Measured(np.asarray(mapes), np.asarray(covered), np.asarray(widths), rows, np.asarray(quantiles),
                        np.asarray(whole), len(np.unique(data.groups[splits[0].train])))
    return measure_spread(data, splits, run, coverage, measured)


def measure_spread(data: Dataset, splits: list[evaluate.Split], run: MethodRun, coverage: float,
                   measured: Measured) -> Measured:
    """An ensemble's normalised (spread-scaled) interval per split, calibrated like the constant one (group level,
    out-of-fold rows of the training part), the rule's choice between the two on those rows, and both measured on
    the test groups. Unchanged for a single net, or where the spread is zero on every calibration row."""
    if run.spread is None or run.out_of_fold_spread is None or run.out_of_fold is None:
        return measured
    quantity = data.target.quantity
    spread_cov, spread_width, uses, chosen_cov, chosen_width = [], [], [], [], []
    first: evaluate.SpreadCalibration | None = None
    for index, split in enumerate(splits):
        train, test = split.train, split.test
        calibration = evaluate.calibrate_spread(data.y[train], run.out_of_fold[index, train],
                                                run.out_of_fold_spread[index, train], data.groups[train], coverage)
        if index == 0:
            first = calibration
        if calibration is None:
            spread_cov.append(np.nan)
            spread_width.append(np.nan)
            uses.append(False)
            chosen_cov.append(measured.coverage[index])
            chosen_width.append(measured.relative_width[index])
            continue
        result = evaluate.held_out_spread_coverage(
            data.y[test], run.predictions[index, test], run.spread[index, test], data.groups[test],
            calibration.quantile, calibration.offset, quantity.physical_min, quantity.physical_max)
        spread_cov.append(result.coverage)
        spread_width.append(result.mean_relative_width)
        uses.append(calibration.uses_spread)
        chosen_cov.append(result.coverage if calibration.uses_spread else measured.coverage[index])
        chosen_width.append(result.mean_relative_width if calibration.uses_spread else measured.relative_width[index])
    return dataclasses.replace(
        measured, spread_coverage=np.asarray(spread_cov), spread_relative_width=np.asarray(spread_width),
        uses_spread=np.asarray(uses), chosen_coverage=np.asarray(chosen_cov),
        chosen_relative_width=np.asarray(chosen_width), calibration=first)


def _paired(measured: dict[str, Measured], main: str, splits: list[evaluate.Split], config: TrainConfig
            ) -> dict[str, evaluate.PairedDifference]:
    """The main method against every other, each interval Bonferroni-widened over the task's comparisons."""
    ratio = float(np.mean([len(s.test) / len(s.train) for s in splits]))
    competitors = [name for name in measured if name != main]
    level = evaluate.bonferroni_level(config.family_confidence, len(competitors))
    return {name: evaluate.paired_difference(measured[main].test_mape, measured[name].test_mape, config.seed,
                                             ratio, config.bootstrap_resamples, level)
            for name in competitors}


def _splits(data: Dataset, config: TrainConfig) -> list[evaluate.Split]:
    return evaluate.repeated_grouped_splits(data.groups, config.seed, config.repeats, config.test_fraction,
                                            config.inner_folds)


# -------------------------------------------------------------------------------------------------------------
# Source and target protocols


def source_task(data: Dataset, config: TrainConfig, name: str) -> TaskOutcome:
    """The pretrained net (nested selection) and the baselines on grouped repeated splits, plus a learning curve."""
    net = config.net(data.target.task)
    splits = _splits(data, config)
    subsets = learning_curve_rows(data, splits[0], config)
    runs = nested_nets(data.scaled, data.y, splits, {"pretrained": _grid("pretrained", net.widths,
                                                                         net.learning_rates)},
                       net.hidden_layers, net.epochs, net.batch_size, config.seed, extra_train=subsets)
    runs.update(_baselines(data, splits, config))
    measured = {m: measure(data, splits, runs[m], config.coverage) for m in SOURCE_METHODS}
    main = runs["pretrained"]
    assert main.layers is not None and main.input_mask is not None and main.extra_predictions is not None
    centre, width = feature_scaling(data.kind)
    model = nets.mlp_model(np.asarray(centre), np.asarray(width), main.input_mask.astype(float), main.layers, name)
    test = splits[0].test
    curve = [(len(rows), evaluate.mape_pct(data.y[test], main.extra_predictions[i, test]))
             for i, rows in enumerate(subsets)]
    return TaskOutcome(data, "pretrained", "pretrained", splits, runs, measured,
                       _paired(measured, "pretrained", splits, config), model, main.input_mask, curve)


def learning_curve_rows(data: Dataset, split: evaluate.Split, config: TrainConfig) -> list[np.ndarray]:
    """Growing shares of the first split's training groups (whole groups), for the source-size ablation: the
    chosen configuration is trained on each and scored on that split's test part."""
    rng = np.random.default_rng(config.seed)
    labels = data.groups[split.train]
    order = [str(g) for g in rng.permutation(np.unique(labels))]
    sizes = Counter(labels.tolist())
    subsets = []
    for fraction in config.learning_curve_fractions:
        taken: list[str] = []
        for group in order:
            if sum(sizes[g] for g in taken) >= max(4, fraction * len(split.train)):
                break
            taken.append(group)
        subsets.append(split.train[np.isin(labels, taken)])
    return subsets


def target_task(data: Dataset, base: keras.Model, source: Dataset | None, base_input_mask: np.ndarray,
                config: TrainConfig, name: str) -> TaskOutcome:
    """Transfer (both adapters, chosen on validation) against zero-shot, its recalibration, pooled, scratch and
    the baselines, all on the same grouped splits. Without the source data the pooled net is left out."""
    net = config.net(data.target.task)
    adapter = config.adapter
    splits = _splits(data, config)
    hidden, zero_shot = nets.frozen_features(base, data.x)
    families = {f"transfer_{kind}": _grid(f"transfer_{kind}", adapter.widths, adapter.learning_rates)
                for kind in adapter.adapters}
    families["transfer"] = [c for cs in families.values() for c in cs]
    members = config.ensemble_members
    runs = nested_nets(hidden, data.y, splits, families, 1, adapter.epochs, net.batch_size, config.seed,
                       skip=zero_shot, skip_methods=("transfer_residual",), mask_constant=False, members=members,
                       ensemble_families=("transfer",))
    runs.update(nested_nets(data.scaled, data.y, splits, {"scratch": _grid("scratch", net.widths, net.learning_rates)},
                            net.hidden_layers, net.epochs, net.batch_size, config.seed, members=members,
                            ensemble_families=("scratch",)))
    if source is not None:
        runs["pooled"] = pooled(data, source, splits, config)
    count = len(splits)
    # Zero-shot fits nothing, so its predictions of the training rows are already out of fold.
    runs["zero_shot"] = MethodRun("zero_shot", np.tile(zero_shot, (count, 1)), [None] * count,
                                  np.asarray([evaluate.mape_pct(data.y[s.train], zero_shot[s.train]) for s in splits]),
                                  out_of_fold=out_of_fold(splits, len(data.y), lambda _, rows: zero_shot[rows]))
    recalibrated = []
    for split in splits:
        a, b = evaluate.linear_recalibration(zero_shot[split.train], data.y[split.train])
        recalibrated.append(a * zero_shot + b)

    def recalibrate(train: np.ndarray, rows: np.ndarray) -> np.ndarray:
        a, b = evaluate.linear_recalibration(zero_shot[train], data.y[train])
        return np.asarray(a * zero_shot[rows] + b)

    runs["zero_shot_recalibrated"] = MethodRun("zero_shot_recalibrated", np.stack(recalibrated), [None] * count,
                                               np.full(count, np.nan),
                                               out_of_fold=out_of_fold(splits, len(data.y), recalibrate))
    runs.update(_baselines(data, splits, config))
    measured = {m: measure(data, splits, runs[m], config.coverage) for m in TARGET_METHODS if m in runs}
    main = runs["transfer"]
    choice = main.choices[0]
    assert choice is not None and main.layers is not None
    design: nets.Adapter = "residual" if choice.method == "transfer_residual" else "paper"
    if main.member_layers is not None and main.member_skip_weights is not None:
        # The served net is the ensemble the figures describe: its mean predicts, its spread scales the interval.
        model = nets.transfer_ensemble_model(base, design, main.member_layers, main.member_skip_weights, name)
    else:
        model = nets.transfer_model(base, design, main.layers, main.skip_weight, name)
    return TaskOutcome(data, "transfer", "transfer", splits, runs, measured,
                       _paired(measured, "transfer", splits, config), model, base_input_mask)


def pooled(data: Dataset, source: Dataset, splits: list[evaluate.Split], config: TrainConfig) -> MethodRun:
    """One net on all source rows plus each split's target training rows, with a dataset indicator input.

    Its width and learning rate are fixed (the widest candidate, the smallest rate) and its mini-batches hold twice
    the rows (about as many steps per epoch as the source net): a reviewer's cheap baseline, not tuned per split,
    which would cost a stack of ~300-row nets per candidate.
    """
    net = config.net(data.target.task)
    low, high = -1.0, 1.0  # the pooled net's dataset indicator: 0 (source) and 1 (target), scaled to ±1
    inputs = np.vstack([np.column_stack([source.scaled, np.full(len(source.y), low)]),
                        np.column_stack([data.scaled, np.full(len(data.y), high)])])
    y = np.concatenate([source.y, data.y])
    target_rows = len(source.y) + np.arange(len(data.y))
    choice = Choice("pooled", min(net.learning_rates), max(net.widths))
    source_rows = np.arange(len(source.y))
    none = np.asarray([], dtype=int)
    members = max(config.ensemble_members, 1)
    # `members` nets per split (the ensemble; each net of a stack starts from its own weights), then as many per
    # inner fold (all source rows + the other folds' target rows), for out-of-fold residuals and spreads.
    folds = [(index, fold) for index, s in enumerate(splits) for fold in range(len(s.folds))]
    jobs = [_Job(np.concatenate([source_rows, target_rows[s.train]]), none, choice, False)
            for _ in range(members) for s in splits]
    jobs += [_Job(np.concatenate([source_rows, target_rows[splits[i].fold_train(f)]]), none, choice, False)
             for _ in range(members) for i, f in folds]
    trained = _stack(inputs, y, jobs, net.hidden_layers, net.epochs, 2 * net.batch_size, config.seed + 3, None,
                     True)
    predictions = trained.predictions[:, target_rows]
    count = len(splits)
    refits = predictions[: members * count].reshape(members, count, len(data.y))
    held_out = np.full((members, count, len(data.y)), np.nan)
    for job, (member, (index, fold)) in enumerate(((m, f) for m in range(members) for f in folds),
                                                  start=members * count):
        rows = splits[index].folds[fold]
        held_out[member, index, rows] = predictions[job, rows]
    ensemble = members > 1
    return MethodRun("pooled", refits.mean(axis=0), [choice] * count, np.full(count, np.nan),
                     train_loss=trained.train_loss[0], out_of_fold=held_out.mean(axis=0), members=members,
                     spread=nets.ensemble_spread(refits) if ensemble else None,
                     out_of_fold_spread=nets.ensemble_spread(held_out) if ensemble else None)
