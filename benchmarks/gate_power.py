"""Power and false alarms of the baseline gate and the verdicts, by simulation.

Samples are drawn log-normal at the spreads the development machine shows
(CV about 1% at 1 thread, 5-9% at 2 threads on 2 cores) and put through the
plugin's own functions: ``comparison.compare`` for the gate, ``verdicts.evaluate``
for a threshold. Prints, per spread and true drop:

- how often the gate flags the row (a regression) under a % rule, with alpha
  shared over ``--rows`` rows as in a real comparison;
- the median ``detects`` figure the rows show;
- the false-failure rate of an efficiency verdict at its threshold exactly, when
  the two thread counts' spreads differ (Welch's degrees of freedom at tiny alphas).

    .venv/bin/python benchmarks/gate_power.py [--trials 2000] [--rounds 5] [--rows 12]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_ollama_cpu.comparison import Gate, compare  # noqa: E402
from pytest_ollama_cpu.rules import parse_rule  # noqa: E402
from pytest_ollama_cpu.saved_runs import SavedRun  # noqa: E402
from pytest_ollama_cpu.statistics import difference, ratio_bounds, t_quantile  # noqa: E402


def document(values: list[float]) -> dict[str, object]:
    samples = [{"tokens_per_second": v} for v in values]
    entry = {
        "fullname": "t.py::test_a[m-generate-t2]",
        "extra_info": {
            "ollama_cpu": {"test": "t.py::test_a", "threads": 2, "model": {}, "samples": samples}
        },
    }
    return {"machine_info": {}, "benchmarks": [entry]}


def gate(args: argparse.Namespace, rng: np.random.Generator) -> None:
    print(
        f"gate: {args.rounds} samples a side, alpha {args.alpha} shared over {args.rows} rows "
        f"(one-sided {args.alpha / args.rows:.2g} a row), {args.trials} trials"
    )
    print("| CV | true drop | rule | flagged | median 'detects' |")
    print("|---|---|---|---|---|")
    for cv in (0.01, 0.03, 0.07):
        for drop in (0.0, 0.05, 0.10, 0.20):
            for rule_text in ("tokens_per_second:5%", "tokens_per_second:10%"):
                rule = parse_rule(rule_text)
                flagged, detects = 0, []
                for _ in range(args.trials):
                    old = 40.0 * np.exp(rng.normal(0, cv, args.rounds))
                    new = 40.0 * (1 - drop) * np.exp(rng.normal(0, cv, args.rounds))
                    comparison = compare(
                        SavedRun(None, document(list(old))),
                        SavedRun(None, document(list(new))),
                        [rule],
                        args.alpha / args.rows,  # this row's share, as among --rows rows
                    )
                    (row,) = comparison.rows
                    flagged += row.regression
                    if row.detectable is not None:
                        detects.append(row.detectable)
                print(
                    f"| {cv:.0%} | {drop:.0%} | {rule_text} | {flagged / args.trials:.1%} | "
                    f"{statistics.median(detects):.0%} |"
                )


def planned(args: argparse.Namespace, rng: np.random.Generator) -> None:
    """The gate as the plugin runs it: a first saved run takes ``--max-rounds`` samples;
    the next run takes what ``Gate.samples_needed`` plans from that baseline's samples
    (at least ``--rounds``) and is compared with it."""
    rule = parse_rule("tokens_per_second:5%")
    gate_ = Gate.planned([rule], args.alpha, args.rows)

    def draw(n: int, cv: float, scale: float, block: list[float] | None) -> list[float]:
        if block is not None:  # the real shape of this machine's noise
            return list(scale * rng.choice(block, n))
        return list(40.0 * scale * np.exp(rng.normal(0, cv, n)))

    print()
    print(
        f"planned gate (the plugin's): rule {rule.text}, {args.rounds} rounds, a first run of "
        f"{args.max_rounds}, alpha {args.alpha} over {args.rows} rows, {args.trials} trials"
    )
    print("| spread | true drop | flagged | mean samples now | median 'detects' |")
    print("|---|---|---|---|---|")
    spreads: list[tuple[str, float, list[list[float]] | None]] = [
        ("CV 1%", 0.01, None),
        ("CV 3%", 0.03, None),
        ("CV 5%", 0.05, None),
    ]
    if args.pool:
        pool = json.loads(Path(args.pool).read_text())
        for threads, blocks in sorted(pool.items()):
            spreads.append((f"pool t{threads} (a run = a block)", 0.0, blocks))
    for label, cv, blocks in spreads:
        for drop in (0.0, 0.05, 0.10):
            flagged, sizes, detects = 0, [], []
            for _ in range(args.trials):
                pair = rng.choice(len(blocks), 2, replace=False) if blocks else (0, 0)
                old = draw(args.max_rounds, cv, 1.0, blocks[pair[0]] if blocks else None)
                need = gate_.samples_needed(
                    [{"tokens_per_second": v} for v in old], args.max_rounds
                )
                new = draw(
                    max(args.rounds, need), cv, 1 - drop, blocks[pair[1]] if blocks else None
                )
                comparison = compare(
                    SavedRun(None, document(old)),
                    SavedRun(None, document(new)),
                    [rule],
                    args.alpha / args.rows,
                )
                (row,) = comparison.rows
                flagged += row.regression
                sizes.append(len(new))
                if row.detectable is not None:
                    detects.append(row.detectable)
            print(
                f"| {label} | {drop:.0%} | {flagged / args.trials:.1%} | "
                f"{statistics.mean(sizes):.1f} | {statistics.median(detects):.0%} |"
            )


def welch_bounds(numerator: list[float], denominator: list[float], alpha: float) -> float:
    """The upper bound ratio_bounds gave with Welch-Satterthwaite degrees of freedom."""
    d = difference([math.log(v) for v in numerator], [math.log(v) for v in denominator])
    assert d is not None
    va, vb = d.share * d.se**2, (1 - d.share) * d.se**2
    df = d.se**4 / (va**2 / d.df_a + vb**2 / d.df_b)
    return math.exp(d.estimate + t_quantile(1 - alpha, df) * d.se)


def verdicts(args: argparse.Namespace, rng: np.random.Generator) -> None:
    print()
    print(
        "verdict at its threshold exactly (efficiency 0.6, 1 vs 2 threads, one look, "
        f"{args.rounds} samples a side): false failures / alpha, and the median ratio of the "
        "intervals' half widths, with the plugin's Behrens-Fisher bounds and with Welch's"
    )
    print(
        "| CV 1 thread | CV 2 threads | alpha | Behrens-Fisher | Welch-Satterthwaite "
        "| median width B-F / Welch |"
    )
    print("|---|---|---|---|---|---|")
    trials = args.trials * 10
    for cv1, cv2 in ((0.01, 0.07), (0.01, 0.04), (0.04, 0.04)):
        for alpha in (0.01, 0.001):
            failures = welch_failures = 0
            widths: list[float] = []
            for _ in range(trials):
                one = list(40.0 * np.exp(rng.normal(0, cv1, args.rounds)))
                two = list(40.0 * 2 * 0.6 * np.exp(rng.normal(0, cv2, args.rounds)))
                bounds = ratio_bounds(two, one, alpha)
                assert bounds is not None
                welch = welch_bounds(two, one, alpha)
                failures += bounds.high / 2 < 0.6
                welch_failures += welch / 2 < 0.6
                centre = math.log(bounds.estimate)
                widths.append((math.log(bounds.high) - centre) / (math.log(welch) - centre))
            print(
                f"| {cv1:.0%} | {cv2:.0%} | {alpha:g} | {failures / trials / alpha:.2f} x | "
                f"{welch_failures / trials / alpha:.2f} x | {statistics.median(widths):.2f} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--max-rounds", type=int, default=20)
    parser.add_argument(
        "--pool", help="JSON of real samples in blocks (benchmarks/noise_pool.py): resampled"
    )
    parser.add_argument("--only", choices=("fixed", "planned", "verdicts"))
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    if args.only in (None, "fixed"):
        gate(args, rng)
    if args.only in (None, "planned"):
        planned(args, rng)
    if args.only in (None, "verdicts"):
        verdicts(args, rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
