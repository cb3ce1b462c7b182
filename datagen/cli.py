"""The `cellmfg data …` commands: generate and check the shipped datasets, validate a lab's CSV, calibrate.

Heavy imports (scikit-image, scikit-learn) happen inside the commands. Progress bars go to stderr so `--json` output
on stdout stays machine-readable; with `--json` the last stdout line is one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cellmfg.console import JsonOption, err, fail, progress

data_app = typer.Typer(no_args_is_help=True, add_completion=False)

SeedOption = Annotated[int | None, typer.Option(help="Random seed (default: the dataset default).")]


@data_app.command("generate")
def data_generate(
    seed: SeedOption = None,
    quick: Annotated[bool, typer.Option(help="Only a few GDL rows (fast; for smoke tests).")] = False,
    check: Annotated[bool, typer.Option(help="Regenerate and fail on any difference from the files in --out.")]
    = False,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the project's data/).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        help="Only these datasets (repeat the option, e.g. --only gdl200 --only gdl1000); default: all five.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate the five datasets (electrodes from a process model, GDLs from microstructures)."""
    from cellmfg.dataio import DATA_DIR
    from cellmfg.domain import DATASETS
    from datagen import generate as datagen

    seed = datagen.DEFAULT_SEED if seed is None else seed
    directory = out or DATA_DIR
    names = tuple(only) if only else (*datagen.ELECTRODES, *datagen.GDLS)
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        fail(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    total = sum(DATASETS[n].paper_rows if not quick or DATASETS[n].kind == "electrode" else datagen.QUICK_GDL_ROWS + 2
                for n in names)
    started = time.perf_counter()
    with progress(total) as advance:
        def step(name: str, rows: int) -> None:
            advance(f"{'checking' if check else 'generating'} {name}", rows)

        if check:
            problems = datagen.check(seed, directory, quick=quick, progress=step, names=names)
        else:
            generated = datagen.generate(seed, directory, quick=quick, progress=step, names=names)
    seconds = time.perf_counter() - started
    if check:
        result: dict[str, Any] = {"identical": not problems, "problems": problems, "seed": seed,
                                  "seconds": round(seconds, 1)}
        if as_json:
            print(json.dumps(result))
        for problem in problems:
            err.print(f"[red]{escape(problem)}[/]", highlight=False, soft_wrap=True)
        if problems:
            raise typer.Exit(1)
        if not as_json:
            print(f"data/ matches a fresh generation with seed {seed}" + (" (quick sample of GDL rows)" if quick
                                                                          else "") + f" ({seconds:.1f} s)")
        return
    summary = {name: {"path": str(path), "seconds": round(generated.seconds[name], 2)}
               for name, path in generated.paths.items()}
    load = os.getloadavg()[0]
    if as_json:
        print(json.dumps({"seed": seed, "datasets": summary, "seconds": round(seconds, 1), "load_average_1min": load}))
    else:
        for name, info in summary.items():
            print(f"{name:10s} {info['path']}  ({info['seconds']} s)")
        print(f"total {seconds:.1f} s wall on {os.cpu_count()} cores (1-min load average at the end: {load:.1f})")


@data_app.command("validate")
def data_validate(
    csv: Annotated[Path, typer.Argument(help="A CSV in the canonical column format.")],
    dataset: Annotated[str | None, typer.Option(help="Paper dataset to compare ranges with (e.g. nmc).")] = None,
    target: Annotated[list[str] | None, typer.Option(help="Target column(s) that must be present.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a lab's CSV: columns, types, NaN/inf, duplicates, physical bounds; report out-of-range values."""
    from cellmfg.dataio import DataValidationError, load_csv

    try:
        loaded = load_csv(csv, target or [], dataset=dataset)
    except (DataValidationError, KeyError) as error:
        fail(str(error))
        return
    report = {"file": str(csv), "kind": loaded.kind, "rows": len(loaded.frame), "sha256": loaded.sha256,
              "ignored_columns": loaded.ignored_columns,
              "out_of_paper_range": [vars(item) for item in loaded.out_of_range]}
    if as_json:
        print(json.dumps(report))
        return
    print(f"{csv}: {report['rows']} valid {loaded.kind} rows")
    for item in loaded.out_of_range:
        print(f"  {item.column}: {item.rows} row(s) outside the paper range {item.paper_min:g}–{item.paper_max:g} "
              f"(observed {item.observed_min:g}–{item.observed_max:g}); accepted")


@data_app.command("calibrate")
def data_calibrate(
    csv: Annotated[Path | None, typer.Argument(help="Electrode CSV with group_id (default: data/graphite.csv).")]
    = None,
    repeats: Annotated[int, typer.Option(help="Grouped 70/30 splits to average over.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Random-forest test MAPE on grouped splits (no sheet on both sides) beside the paper's source-net errors."""
    import pandas as pd

    from cellmfg.dataio import DATA_DIR
    from datagen import calibration
    from datagen.electrode_process import GROUP_ID

    path = csv or DATA_DIR / "graphite.csv"
    frame = pd.read_csv(path)
    if GROUP_ID not in frame.columns:
        fail(f"{path}: no {GROUP_ID} column; grouped splits need the sheet of every row")
    scores = calibration.random_forest_scores(frame, repeats=repeats)
    if as_json:
        print(json.dumps({"file": str(path), "scores": [vars(s) for s in scores],
                          "paper_source_mape_pct": calibration.PAPER_SOURCE_MAPE_PCT}))
    else:
        print(calibration.markdown(scores))


@data_app.command("realism")
def data_realism(
    data: Annotated[Path | None, typer.Option(help="Folder of dataset CSVs (default: the project's data/).")] = None,
    results: Annotated[Path | None, typer.Option(
        help="A `cellmfg train all` results CSV for the source nets' in-domain and zero-shot errors "
             "(default: docs/results.csv when it exists).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the Markdown report here (e.g. docs/realism.md).")] = None,
    repeats: Annotated[int, typer.Option(min=2, help="Grouped 70/30 splits to average over.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """How hard each dataset is: spread, mean/linear/forest scores on grouped splits, noise-free R², the paper."""
    from dataclasses import asdict

    from cellmfg.dataio import DATA_DIR
    from datagen import realism

    directory = data or DATA_DIR
    results_csv = results or (DATA_DIR.parent / "docs" / "results.csv")
    measured = realism.measure_all(directory, repeats=repeats)
    if not measured:
        fail(f"{directory}: no dataset CSVs found")
    difficulty = realism.difficulty_rows(results_csv) if results_csv.exists() else []
    shown = results_csv.resolve()
    with contextlib.suppress(ValueError):  # inside the project: a path relative to it, the same in every clone
        shown = shown.relative_to(DATA_DIR.parent.resolve())
    text = realism.markdown(measured, difficulty, str(shown) if difficulty else None, repeats=repeats)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    if as_json:
        print(json.dumps({"targets": [asdict(item) for item in measured],
                          "source_nets": [asdict(row) for row in difficulty],
                          "goals": [asdict(goal) for goal in realism.goals(measured, difficulty)],
                          "written": str(out) if out else None}))
    elif out is None:
        print(text, end="")
    else:
        print(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(data_app())
