"""The evaluation protocol of one task: every method on the same grouped outer splits, choices made by nested
grouped validation, test rows read once for the report.

Per outer split (the first one's models are the registered ones):
- net methods choose their width and learning rate (and, for transfer, the adapter design) by the out-of-fold
  MAPE of grouped inner validation folds of the training part, then refit the chosen configuration on the whole
  training part;
- the other methods fit on the whole training part (zero-shot fits nothing);
- every method predicts the test part; its MAPE and its conformal coverage and width are measured there.

Source tasks: the pretrained net (`pretrained`) against the baselines, plus a source-size learning curve.
Target tasks: `transfer` (the adapter design validation chose), `transfer_paper` (the paper's adapter),
`transfer_residual` (ours), `zero_shot`, `zero_shot_recalibrated` (a·ŷ + b on the training part), `pooled`
(one net on source + target rows with a dataset indicator), `scratch` and the baselines.
"""

from __future__ import annotations

from collections import Counter
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


@dataclass
class Measured:
    """A method's held-out figures per split."""

    test_mape: np.ndarray
    coverage: np.ndarray
    relative_width: np.ndarray
    coverage_rows: int


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
                extra_train: list[np.ndarray] | None = None) -> dict[str, MethodRun]:
    """Nested selection and refit for every family (method name → its candidates) on every split, in two stacks.

    Families may share candidates (`transfer` chooses among both adapters' candidates): each is trained once.
    `extra_train`: further training-row sets fitted with the first family's first-split choice in the refit stack
    (the learning curve), returned as `MethodRun.extra_predictions`.
    """
    unique = list(dict.fromkeys(c for cs in families.values() for c in cs))
    candidates = [(s, c) for s in range(len(splits)) for c in unique]
    jobs = [_Job(split.fold_train(f), split.folds[f], choice, choice.method in skip_methods)
            for s, choice in candidates for split in [splits[s]] for f in range(len(split.folds))]
    first = _stack(inputs, y, jobs, hidden_layers, epochs, batch_size, seed, skip, mask_constant)
    # Out-of-fold predictions of each (split, candidate) on its training part → validation MAPE.
    scores: dict[tuple[int, Choice], float] = {}
    curves: dict[tuple[int, Choice], np.ndarray] = {}
    position = 0
    for s, choice in candidates:
        split = splits[s]
        out_of_fold = np.empty(len(y))
        fold_curves = []
        for fold in split.folds:
            out_of_fold[fold] = first.predictions[position, fold]
            fold_curves.append(first.validation_loss[position])
            position += 1
        scores[(s, choice)] = evaluate.mape_pct(y[split.train], out_of_fold[split.train])
        curves[(s, choice)] = np.mean(fold_curves, axis=0)
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
    for family in families:
        chosen = [picks[(s, family)] for s in range(len(splits))]
        positions = [index_of[(s, c)] for s, c in enumerate(chosen)]
        first_job = positions[0]
        out[family] = MethodRun(
            family, second.predictions[positions], list(chosen),
            np.asarray([scores[(s, c)] for s, c in enumerate(chosen)]),
            train_loss=second.train_loss[first_job], validation_loss=curves[(0, chosen[0])],
            layers=second.layer_weights(first_job), skip_weight=float(second.skip_weight[first_job]),
            input_mask=(~nets.constant_columns(inputs[splits[0].train])) if mask_constant else None,
            extra_predictions=second.predictions[len(refits):] if family == first_family else None)
    return out


def _grid(method: str, widths: tuple[int, ...], learning_rates: tuple[float, ...]) -> list[Choice]:
    return [Choice(method, lr, w) for lr in learning_rates for w in widths]


# -------------------------------------------------------------------------------------------------------------
# Baselines and measurement


def _baselines(data: Dataset, splits: list[evaluate.Split], config: TrainConfig) -> dict[str, MethodRun]:
    out = {}
    for name in evaluate.BASELINES:
        predictions = np.stack([
            np.asarray(evaluate.fit_baseline(name, data.x[s.train], data.y[s.train], s.seed,
                                             config.random_forest_trees).predict(data.x), dtype=float)
            for s in splits])
        out[name] = MethodRun(name, predictions, [None] * len(splits), np.full(len(splits), np.nan))
    return out


def measure(data: Dataset, splits: list[evaluate.Split], run: MethodRun, coverage: float) -> Measured:
    quantity = data.target.quantity
    mapes, covered, widths, rows = [], [], [], 0
    for index, split in enumerate(splits):
        prediction = run.predictions[index]
        mapes.append(evaluate.mape_pct(data.y[split.test], prediction[split.test]))
        result = evaluate.grouped_coverage(data.y[split.test], prediction[split.test], data.groups[split.test],
                                           coverage, quantity.physical_min, quantity.physical_max)
        covered.append(result.coverage)
        widths.append(result.mean_relative_width)
        rows += result.rows
    return Measured(np.asarray(mapes), np.asarray(covered), np.asarray(widths), rows)


def _paired(measured: dict[str, Measured], main: str, splits: list[evaluate.Split], config: TrainConfig
            ) -> dict[str, evaluate.PairedDifference]:
    ratio = float(np.mean([len(s.test) / len(s.train) for s in splits]))
    return {name: evaluate.paired_difference(measured[main].test_mape, m.test_mape, config.seed, ratio,
                                             config.bootstrap_resamples)
            for name, m in measured.items() if name != main}


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
    runs = nested_nets(hidden, data.y, splits, families, 1, adapter.epochs, net.batch_size, config.seed,
                       skip=zero_shot, skip_methods=("transfer_residual",), mask_constant=False)
    runs.update(nested_nets(data.scaled, data.y, splits, {"scratch": _grid("scratch", net.widths, net.learning_rates)},
                            net.hidden_layers, net.epochs, net.batch_size, config.seed))
    if source is not None:
        runs["pooled"] = pooled(data, source, splits, config)
    count = len(splits)
    runs["zero_shot"] = MethodRun("zero_shot", np.tile(zero_shot, (count, 1)), [None] * count,
                                  np.asarray([evaluate.mape_pct(data.y[s.train], zero_shot[s.train]) for s in splits]))
    recalibrated = []
    for split in splits:
        a, b = evaluate.linear_recalibration(zero_shot[split.train], data.y[split.train])
        recalibrated.append(a * zero_shot + b)
    runs["zero_shot_recalibrated"] = MethodRun("zero_shot_recalibrated", np.stack(recalibrated), [None] * count,
                                               np.full(count, np.nan))
    runs.update(_baselines(data, splits, config))
    measured = {m: measure(data, splits, runs[m], config.coverage) for m in TARGET_METHODS if m in runs}
    main = runs["transfer"]
    choice = main.choices[0]
    assert choice is not None and main.layers is not None
    design: nets.Adapter = "residual" if choice.method == "transfer_residual" else "paper"
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
    jobs = [_Job(np.concatenate([np.arange(len(source.y)), target_rows[s.train]]), target_rows[s.test[:0]], choice,
                 False) for s in splits]
    trained = _stack(inputs, y, jobs, net.hidden_layers, net.epochs, 2 * net.batch_size, config.seed + 3, None,
                     True)
    return MethodRun("pooled", trained.predictions[:, target_rows], [choice] * len(splits),
                     np.full(len(splits), np.nan), train_loss=trained.train_loss[0])
