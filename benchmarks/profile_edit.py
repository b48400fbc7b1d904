"""Where one dashboard-sized edit spends its time (issue 13: profile first).

    python -m benchmarks.profile_edit [--rounds N] [--model BUNDLED_NAME] [--out DIR]

The What-if page's default question on the bundled default (class 0 removed, GIF and IF at the page's settings —
``EditConfig()`` with ``linearize=True`` — and the retrained model from the cache) is run as the page runs it, in its
two parts, each under ``cProfile``:

* the preparation (:func:`gif_core.experiment.prepare_edit`; the page runs it in the background before the click):
  the request's gradient and the Hessian sample (``problem.prepare``), the trace of the Hessian-vector product
  (``Curvature.warm``), the selection (``selection.select``), and the original's and retrained model's metrics
  (``experiment._evaluate``);
* the click (:func:`gif_core.experiment.answer`, then the page's predictions and every chart, each figure serialised
  to JSON as ``st.plotly_chart`` does): the solves (``influence.estimate``), the step searches
  (``experiment.search_validation_step``), the edited models' metrics (``experiment._evaluate``; the MIA SVC of
  ``evaluate.mia_efficacy`` runs for sample removals and label changes only, so it is 0 here), the predictions
  (``comparison.predictions_of``) and the charts.

A phase's seconds are the cumulative time of the function that implements it. cProfile's own overhead inflates
the many-small-call phases; the plain wall-clock of the same work, unprofiled, is reported beside it (median of
``--rounds``). ``run_edit`` end to end (what the CLI runs) is timed with the Hessian's products traced
(``linearize=True``) and not, interleaved round by round. Imports are timed apart, in a fresh interpreter,
cumulatively in the order the page imports them. Retraining is not in the profile: the page retrains once per
question and then serves it from the cache (its first-time seconds are reported).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from app import charts
from benchmarks.common import RESULTS, edit_config, markdown_table, write_results
from gif_core.checkpoints import checkpoint_id, load_checkpoint
from gif_core.comparison import predictions_of
from gif_core.data import load_data
from gif_core.experiment import EditConfig, EditReport, PreparedEdit, answer, prepare_edit, run_edit
from gif_core.requests import ClassRemoval
from gif_core.retrain import retrain
from gif_core.zoo import DEFAULT_MODEL, bundled_model_path

METHODS = ("gif", "if")  # the page's default methods
PREPARATION_PHASES = {  # phase → (module file suffix, function name) whose cumulative time it is
    "request gradient + Hessian sample": ("gif_core/problem.py", "prepare"),
    "trace of the Hessian-vector product": ("gif_core/curvature.py", "warm"),
    "selection": ("gif_core/selection.py", "select"),
    "metrics of the original and the retrained": ("gif_core/experiment.py", "_evaluate"),
}
CLICK_PHASES = {
    "solve (GIF and IF)": ("gif_core/influence.py", "estimate"),
    "  of which Hessian-vector products": ("gif_core/curvature.py", "hvp"),
    "step search (both methods)": ("gif_core/experiment.py", "search_validation_step"),
    "metrics of the edited models": ("gif_core/experiment.py", "_evaluate"),
    "  of which MIA (SVC)": ("gif_core/evaluate.py", "mia_efficacy"),
    "page predictions (4 models)": ("gif_core/comparison.py", "predictions_of"),
    "charts (build + JSON)": ("benchmarks/profile_edit.py", "draw_charts"),
}
IMPORTS = ("torch", "numpy", "plotly.graph_objects", "streamlit", "gif_core.experiment", "app.charts")


def draw_charts(report, predictions, bundle) -> tuple[int, int]:
    """Every figure the What-if page draws for a class removal, serialised as ``st.plotly_chart`` does; returns the
    number of figures and their JSON size in bytes."""
    removed = np.flatnonzero(bundle.test.labels.numpy() == report.request.cls)
    counts = {p.name: p.predicted_counts(removed, bundle.num_classes) for p in predictions}
    figures = [
        charts.per_class_accuracy(predictions, bundle.classes),
        charts.predicted_histogram(counts, bundle.classes, bundle.classes[report.request.cls]),
        *(charts.confusion(p, bundle.classes) for p in predictions),
        *(
            charts.probabilities({p.name: p.probabilities[row].numpy() for p in predictions}, bundle.classes, f"#{row}")
            for row in removed[:3]
        ),
        charts.step_curves({o.method: o.step_curve for o in report.outcomes if o.step_curve}),
    ]
    return len(figures), sum(len(figure.to_json()) for figure in figures)


def click(prepared: PreparedEdit, config: EditConfig, bundle) -> tuple[EditReport, tuple[int, int]]:
    """What the page does when *Run the edit* is pressed after the preparation."""
    report = answer(prepared, config)
    probabilities = {"original": report.original_test_probs, "retrained": report.retrained_test_probs}
    probabilities.update({o.method.upper(): o.test_probs for o in report.outcomes})
    predictions = predictions_of(probabilities, bundle.test, bundle.num_classes)
    return report, draw_charts(report, predictions, bundle)


def phase_rows(stats: pstats.Stats, phases: dict[str, tuple[str, str]], total: float) -> list[dict]:
    seconds = dict.fromkeys(phases, 0.0)
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        for phase, (suffix, function) in phases.items():
            if name == function and filename.replace("\\", "/").endswith(suffix):
                seconds[phase] += cumulative
    return [{"phase": p, "seconds": s, "share of the profiled total (%)": 100 * s / total} for p, s in seconds.items()]


def hotspots(stats: pstats.Stats, count: int = 12) -> list[dict]:
    top = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:count]
    return [
        {"function": f"{Path(f).name}:{line} {name}", "calls": calls, "own seconds": own, "cumulative": cumulative}
        for (f, line, name), (_, calls, own, cumulative, _) in top
    ]


def profiled(function, *args) -> tuple[object, pstats.Stats, float]:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    result = profiler.runcall(function, *args)
    return result, pstats.Stats(profiler), time.perf_counter() - start


def import_seconds() -> list[dict]:
    """Cumulative seconds after each import of IMPORTS in one fresh interpreter."""
    code = (
        "import importlib, json, time\nstart = time.perf_counter()\nout = []\n"
        f"for name in {IMPORTS!r}:\n    importlib.import_module(name)\n"
        "    out.append({'module': name, 'cumulative_seconds': time.perf_counter() - start})\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a bundled model (the test profiles the iris MLP)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    path = bundled_model_path(args.model)
    model, card = load_checkpoint(path)
    bundle = load_data(card.dataset, seed=card.split_seed)
    request, config = ClassRemoval(0), edit_config(methods=METHODS, linearize=True)  # as the page runs it
    truth = retrain(card, bundle, bundle.train, request, checkpoint_id(path), show_bar=False)

    def prepare() -> PreparedEdit:
        return prepare_edit(model, card, bundle, request, config, retrained_model=truth.model)

    click(prepare(), config, bundle)  # warm-up: lazy imports, allocator, thread pools
    plain_prepare, plain_click = [], []
    for _ in range(args.rounds):  # a fresh preparation per click: a first click solves IF too (later ones reuse it)
        start = time.perf_counter()
        prepared = prepare()
        plain_prepare.append(time.perf_counter() - start)
        start = time.perf_counter()
        click(prepared, config, bundle)
        plain_click.append(time.perf_counter() - start)
    plain_prepare, plain_click = statistics.median(plain_prepare), statistics.median(plain_click)
    end_to_end = {True: [], False: []}
    for _ in range(args.rounds):
        for flag in end_to_end:
            start = time.perf_counter()
            run_edit(model, card, bundle, request, edit_config(config, linearize=flag), retrained_model=truth.model)
            end_to_end[flag].append(time.perf_counter() - start)
    prepared, prep_stats, prep_profiled = profiled(prepare)
    (report, (n_charts, chart_bytes)), click_stats, click_profiled = profiled(click, prepared, config, bundle)
    solvers = [o.result.solver_summary() for o in report.outcomes]
    imports = import_seconds()
    data = {
        "rounds": args.rounds,
        "preparation": {"plain_seconds": plain_prepare, "profiled_seconds": prep_profiled,
                        "phases": phase_rows(prep_stats, PREPARATION_PHASES, prep_profiled),
                        "hotspots": hotspots(prep_stats)},
        "click": {"plain_seconds": plain_click, "profiled_seconds": click_profiled,
                  "phases": phase_rows(click_stats, CLICK_PHASES, click_profiled), "hotspots": hotspots(click_stats)},
        "run_edit_seconds": {"linearized": statistics.median(end_to_end[True]),
                             "plain": statistics.median(end_to_end[False])},
        "imports": imports, "solvers": solvers, "charts": n_charts, "chart_bytes": chart_bytes,
        "retrain_seconds_first_time": truth.seconds,
    }  # fmt: skip
    hvps = ", ".join(f"{o.method.upper()} {s['hvps']}" for o, s in zip(report.outcomes, solvers, strict=True))
    e2e = data["run_edit_seconds"]
    cache_note = "served from the cache in this run" if truth.from_cache else "trained in this run, cached since"
    body = f"""# One What-if edit, profiled (issue 13)

The page's default question on the bundled default: class 0 removed, {", ".join(m.upper() for m in METHODS)} at the
page's settings (`EditConfig()`, products traced), compared with the cached retrained model. Hessian-vector
products: {hvps}. Retraining this question took {truth.seconds:.1f} s the first time ({cache_note}). Plain
wall-clock, median of {args.rounds}:

| part | seconds |
|---|---|
| preparation (background on the page, `prepare_edit`) | {plain_prepare:.2f} |
| click: `answer` + predictions + {n_charts} charts (JSON {chart_bytes / 1e6:.2f} MB) | {plain_click:.2f} |
| `run_edit` end to end, Hessian products traced (`linearize=True`, as the page does) | {e2e["linearized"]:.2f} |
| `run_edit` end to end, plain products (`linearize=False`, the library default) | {e2e["plain"]:.2f} |

## The click (cumulative time of the function that implements each phase; sub-rows are inside the row above)
Profiled total {click_profiled:.2f} s.

{markdown_table(data["click"]["phases"], list(data["click"]["phases"][0]))}

## The preparation
Profiled total {prep_profiled:.2f} s.

{markdown_table(data["preparation"]["phases"], list(data["preparation"]["phases"][0]))}

## Top functions of the click by own time
{markdown_table(data["click"]["hotspots"], list(data["click"]["hotspots"][0]))}

## Imports (a fresh interpreter, cumulative, in the page's order)
{markdown_table(imports, ["module", "cumulative_seconds"])}
"""
    print(write_results("profile_edit", body, data, args.out))


if __name__ == "__main__":
    main()
