"""A simulated experiment campaign with the data generator as the lab (issue 24, item 4): suggestion (the /suggest
criterion), random and Sobol recipes, 8 rounds of 4 sheets from 2 start sheets, paired repetitions; the logic is in
`training.campaign`, the protocol in its docstring and in docs/campaign.md.

    nice -n 10 .venv/bin/python scripts/campaign.py --out docs [--mlflow]     # the full campaign, both targets
    .venv/bin/python scripts/campaign.py --quick                                # smoke run (< 1 min): quick preset,
                                                                                # NMC density, 2 repetitions, 2 rounds
    # split over processes (repetitions are seeded by their index: the same figures as one run), then one report:
    nice -n 10 .venv/bin/python scripts/campaign.py --targets nmc:density --repeats 10 --out /tmp/c/nmc0 &
    nice -n 10 .venv/bin/python scripts/campaign.py --targets nmc:density --repeats 10 --first-repeat 10 \
        --out /tmp/c/nmc1 &
    …; wait; .venv/bin/python scripts/campaign.py --combine /tmp/c/nmc0,/tmp/c/nmc1,… --out docs [--mlflow]

Options: --targets chemistry:task,… (default nmc:density,si_gra:density), --repeats (20), --rounds (8), --preset
(paper), --seed. Writes campaign.md (the report), campaign.csv (held-out MAPE per target, strategy, repetition and
round; rewritten after every repetition), campaign.png and campaign_run.json (command, wall and CPU time) to --out
(default /tmp/campaign, so a smoke run never touches docs/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TARGETS = "nmc:density,si_gra:density"
QUICK_TARGETS = "nmc:density"
RUN_FILE = "campaign_run.json"

HEADER = """# Simulated campaign: which recipes to measure next (issue 24, item 4)

The data generator is the lab. Each repetition draws a fresh lab campaign of the target chemistry from the electrode
generator (`datagen.electrode_process`, read at run time); two of its sheets at random are what the lab starts with,
all its other sheets are the repetition's **fixed held-out set**, the same for every strategy and round. Then 8 rounds
of 4 recipes, chosen by

- **suggestion**: the `/suggest` criterion without a window (largest ensemble spread σ/|p| over a Sobol design of
  the box, candidates answered alike counted once, the best 4 kept a tenth of a range apart): the same Sobol design,
  duplicate removal and greedy pass as the service (`cellmfg/recipe_search.py`, which both import; a test checks
  the box and the picks against `service.design`);
- **random**: uniform in the box; **sobol**: one scrambled Sobol sequence per repetition, 4 points a round.

The box is the chemistry's paper range for all three (the service searches the served model's training range, which
after two sheets is a sliver; see "What this does not show"). Measuring a recipe makes a new sheet as the generator
makes one: fresh sheet effects (slurry batch, coater run and drift, spring-back), one calendered piece at the
recipe's roll gap and speed, 2–4 discs with the generator's punch, gauge and density scatter, its density cap and
its gross-error rate. After every round each strategy's model is retrained on everything it has measured, exactly
as training builds the transfer (`fit.nested_nets`: frozen base, adapter design, width and learning rate chosen on
grouped inner validation folds, K = 5 members refit), and scored on the held-out set. The base is pretrained once
per target on the generator's graphite campaign. The round-0 model (2 start sheets) is one model shared by the
three curves: the comparison is paired from the start.

Figures: per repetition, the sheets measured when the held-out MAPE first reaches the paper's transfer MAPE for the
target (`cellmfg.paper.PAPER_MAPE`, "transfer_paper"), and the area under the MAPE-against-sheets curve divided by
its span (the campaign's mean MAPE). Paired differences over repetitions (suggestion − random, suggestion − Sobol)
with bootstrap intervals (`evaluate.paired_difference`; repetitions are independent lab campaigns, so no
Nadeau–Bengio widening), Bonferroni over the two comparisons of each figure. A repetition that never reaches the
goal counts as one round beyond the last in the paired sheets figure (censored); the table gives the share that
reach it.
"""

LIMITS = """
## What this does not show

- The lab is a generator: its noise and sheet effects are in every measurement, but its process model is simpler
  than a coating line, and the held-out set is drawn with the generator's own design (recipes spread like a lab's
  campaign), so a strategy that explores the corners of the box learns recipes the held-out set rarely asks about.
- `/suggest` as served searches the training range of the served model; a model trained on 2 sheets has a training
  range of 2 formulations, so the served endpoint would keep suggesting inside it. The campaign gives every strategy
  the paper range instead. Sharing the selection code between the service and training would need the search box,
  Sobol design, greedy diversity pass and ranking to move to the core (`cellmfg/`).
- One target per model: /suggest averages the relative spread over the dataset's targets (density and mass loading);
  here the ensemble of the campaign's target alone ranks.
- GDL1000 tortuosity is not run: a GDL "measurement" generates a microstructure (~3–5 s each), 20 repetitions × 3
  strategies × 32 structures ≈ 2,000 structures ≈ 2–3 h on 2 cores before any training.
"""


def _verdict_lines(plan: Any, summary: Any) -> list[str]:
    from training.campaign import records as campaign_records

    lines = []
    for row in campaign_records(summary.comparisons):
        if row.figure != "auc_mean_mape_pct":
            continue
        other = row.comparison.split("−")[-1].strip()
        if row.verdict == "suggestion better":
            lines.append(f"- {plan.chemistry} {plan.target.task}: suggestion beats {other} on the mean MAPE over the "
                         f"campaign ({row.mean:+.2f} points, interval [{row.low:+.2f}, {row.high:+.2f}]).")
        else:
            word = "is worse than" if row.verdict == "suggestion worse" else "does not beat"
            lines.append(f"- {plan.chemistry} {plan.target.task}: **suggestion {word} {other}** on the mean MAPE "
                         f"over the campaign ({row.mean:+.2f} points, interval [{row.low:+.2f}, {row.high:+.2f}]).")
    return lines


def report(panels: list[tuple[Any, Any]], runs: list[dict[str, Any]], preset: str, repeats: int) -> str:
    from training import campaign

    parts = [HEADER, "## Runs", ""]
    for run in runs:
        parts.append(f"- `{run['command']}`: wall time {run['wall_seconds'] / 60:.1f} min, CPU "
                     f"{run['cpu_seconds'] / 60:.1f} min ({run.get('machine', 'machine not recorded')}); "
                     f"generator `datagen/electrode_process.py` sha256 {run.get('generator_sha256', '?')[:12]}")
    if len(runs) > 1:
        wall = max(r["wall_seconds"] for r in runs) / 60
        cpu = sum(r["cpu_seconds"] for r in runs) / 60
        parts += ["", f"The {len(runs)} runs ran at the same time (repetitions are seeded by their index, so the split "
                      f"gives the figures one run would): the campaign's wall time is the longest run's, {wall:.0f} "
                      f"min; CPU time {cpu:.0f} min in all. One process for everything (`nice -n 10 .venv/bin/python "
                      f"scripts/campaign.py --out docs`) needs about that CPU time as wall time on an idle core (the "
                      f"nets train single-threaded)."]
    parts += ["", f"Preset `{preset}` ({_preset_text(preset)}), {repeats} repetitions.", "", "## Verdicts", ""]
    for plan, summary in panels:
        parts += _verdict_lines(plan, summary)
    parts += ["", "## Tables", "", "![MAPE against sheets measured](campaign.png)", ""]
    for plan, summary in panels:
        parts += [campaign.markdown(plan, summary)]
    return "\n".join(parts) + LIMITS


def _preset_text(preset: str) -> str:
    from training.config import load_config

    config = load_config(preset)
    adapter = config.adapter
    return (f"adapters {', '.join(adapter.adapters)}, widths {adapter.widths}, learning rates "
            f"{adapter.learning_rates}, {adapter.epochs} epochs, K = {config.ensemble_members} members, "
            f"{config.inner_folds} inner folds")


def _generator_sha256() -> str:
    import hashlib

    from datagen import electrode_process

    return hashlib.sha256(Path(electrode_process.__file__).read_bytes()).hexdigest()


def _machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load {load[0]:.1f} at the end"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=None, help=f"chemistry:task pairs, comma-separated (default "
                                                         f"{DEFAULT_TARGETS}; --quick: {QUICK_TARGETS})")
    parser.add_argument("--repeats", type=int, default=None, help="paired repetitions (default 20; --quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of 4 recipes (default 8; --quick 2)")
    parser.add_argument("--preset", default=None, help="training preset (default paper; --quick: quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: quick preset, 2 repetitions, 2 rounds")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's)")
    parser.add_argument("--first-repeat", type=int, default=0, help="index of the first repetition (to split a "
                                                                    "campaign over processes; see --combine)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/campaign"))
    parser.add_argument("--combine", default=None, help="folders of earlier runs (comma-separated): report them "
                                                        "together without training")
    parser.add_argument("--mlflow", action="store_true", help="also log one MLflow run (tables, plot, metrics)")
    args = parser.parse_args()
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 20)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 8)
    preset = args.preset or ("quick" if args.quick else "paper")
    targets = args.targets or (QUICK_TARGETS if args.quick else DEFAULT_TARGETS)

    from cellmfg_cli import quiet_libraries

    quiet_libraries()
    import pandas as pd

    from training import campaign
    from training.config import load_config

    config = load_config(preset, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        folders = [Path(f) for f in args.combine.split(",")]
        table = pd.concat([pd.read_csv(f / "campaign.csv") for f in folders], ignore_index=True)
        runs = [json.loads((f / RUN_FILE).read_text()) for f in folders if (f / RUN_FILE).is_file()]
        read = campaign.from_table(table, config)
        panels = [(plan, campaign.summarise(plan, reps)) for plan, reps in read]
        repeats = max(len(reps) for _, reps in read)
    else:
        table, panels, runs = _run(args, parser, campaign, config, targets, repeats, rounds, preset)
    (args.out / "campaign.md").write_text(report(panels, runs, preset, repeats))
    table.to_csv(args.out / "campaign.csv", index=False)
    campaign.plot(panels, args.out / "campaign.png")
    if args.mlflow:
        run_id = campaign.log_mlflow(panels, args.out, {"repeats": repeats, "preset": preset,
                                                       "runs": json.dumps(runs)})
        print(f"MLflow run {run_id}")
    for plan, summary in panels:
        print(campaign.markdown(plan, summary))
    print(f"files in {args.out}")
    return 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, campaign: Any, config: Any, targets: str,
         repeats: int, rounds: int, preset: str) -> tuple[Any, list[tuple[Any, Any]], list[dict[str, Any]]]:
    import pandas as pd

    from cellmfg.domain import TARGETS
    from datagen.generate import DEFAULT_SEED

    pairs = []
    for item in targets.split(","):
        chemistry, _, task = item.strip().partition(":")
        if chemistry not in campaign.ELECTRODE_CHEMISTRIES or task not in ("density", "mass_loading"):
            parser.error(f"--targets: {item!r}; give chemistry:task with chemistry in "
                         f"{', '.join(campaign.ELECTRODE_CHEMISTRIES)} and task density or mass_loading")
        pairs.append((chemistry, TARGETS[task]))
    started, cpu_started = time.perf_counter(), sum(os.times()[:4])
    panels: list[tuple[Any, Any]] = []
    frames: list[pd.DataFrame] = []
    for chemistry, target in pairs:
        target_started = time.perf_counter()
        setup = campaign.prepare(chemistry, target, config, rounds, DEFAULT_SEED)
        print(f"{chemistry} {target.task}: base pretrained in {time.perf_counter() - target_started:.0f} s",
              flush=True)

        def tick(done: list[Any], since: float = target_started, plan: Any = setup.plan) -> None:
            # The curves so far are on disk after every repetition: a stopped run still reports what it measured.
            pd.concat([*frames, campaign.long_table(plan, done)], ignore_index=True).to_csv(
                args.out / "campaign.csv", index=False)
            print(f"  repetition {done[-1].repeat + 1} ({len(done)}/{repeats}) done, "
                  f"{time.perf_counter() - since:.0f} s", flush=True)

        repetitions = campaign.run_campaign(setup, repeats, tick, args.first_repeat)
        panels.append((setup.plan, campaign.summarise(setup.plan, repetitions)))
        frames.append(campaign.long_table(setup.plan, repetitions))
    run = {"command": "nice -n 10 .venv/bin/python " + " ".join(["scripts/campaign.py", *sys.argv[1:]]),
           "wall_seconds": round(time.perf_counter() - started),
           "cpu_seconds": round(sum(os.times()[:4]) - cpu_started),
           "machine": _machine(), "generator_sha256": _generator_sha256(), "preset": preset, "repeats": repeats,
           "rounds": rounds, "targets": targets, "first_repeat": args.first_repeat}
    (args.out / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")
    print(f"wall time {run['wall_seconds']} s; CPU {run['cpu_seconds']} s", flush=True)
    return pd.concat(frames, ignore_index=True), panels, [run]


if __name__ == "__main__":
    sys.exit(main())
