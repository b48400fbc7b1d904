"""The What-if page's metrics table and run history, as a reader meets them: one row per model (original, retrained,
each edit), human column names with their units, one decimal for percentages, blank cells where a metric does not
apply, the best edited model of each column marked with ★, and each edit's status in words on its own row.

Presentation only (pandas, no Streamlit): every number comes from an :class:`~gif_core.experiment.EditReport`; what
is decided here is how it reads (names, order, rounding, which cell is marked best, the legend).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from gif_core.evaluate import AVG_GAP_KEYS
from gif_core.experiment import EditReport, MethodOutcome
from gif_core.influence import METHOD_LABELS, METHOD_SUMMARIES
from gif_core.requests import EditRequest, counted

HIGHER, LOWER, RETRAINED = "higher", "lower", "closest to retrained"
"""What "best" means for a column: the largest value, the smallest, or the value nearest the retrained model's."""
BEST_MARK = "★"
BEST_STYLE = "font-weight: bold; background-color: rgba(255, 215, 0, 0.25)"
"""How a best cell is drawn (st.dataframe renders a Styler's font-weight and background-color)."""


@dataclass(frozen=True)
class Column:
    """How one metric reads: its header (with unit), how a value is written, and which value is best (None: no
    best, e.g. the step)."""

    label: str
    fmt: str
    better: str | None
    meaning: str


COLUMNS: dict[str, Column] = {
    "avg_gap": Column(
        "Avg. Gap vs retrained (pp)",
        "{:.1f}",
        LOWER,
        "mean over {gap_keys} of |edited − retrained|, in percentage points: how far the edit is from really "
        "retraining without the data.",
    ),
    "agreement": Column(
        "Agreement with retrained (%)", "{:.1f}", HIGHER, "test images on which the edit predicts the retrained class."
    ),
    "kl": Column("KL from retrained (nats)", "{:.3f}", LOWER, "mean KL(retrained ‖ edited) over the test images."),
    "forget_acc": Column(
        "Forget accuracy (%)",
        "{:.1f}",
        RETRAINED,
        "accuracy on the questioned data (class removal: the test images of the class; sample removal: the removed "
        "training samples; label change: the relabelled samples against their OLD labels).",
    ),
    "retain_acc": Column(
        "Retain accuracy (%)",
        "{:.1f}",
        HIGHER,
        "accuracy on the data that stays (class removal: the other test images; otherwise the other training samples).",
    ),
    "test_acc": Column("Test accuracy (%)", "{:.1f}", HIGHER, "accuracy on the whole test split."),
    "f1": Column(
        "F1 (%)",
        "{:.1f}",
        HIGHER,
        "the GIF paper's F1 of forgetting and keeping, 2(1 − f)·r / ((1 − f) + r) with f = forget and r = retain "
        "accuracy as fractions (not a macro F1 over classes).",
    ),
    "mia": Column(
        "MIA (%)",
        "{:.1f}",
        RETRAINED,
        "membership-inference efficacy: an SVM learns to tell retained training samples (members) from test "
        "samples (non-members) by the model's confidence in the true label; MIA is the share of the forgotten "
        "samples it calls non-members (higher looks more forgotten; the retrained model's value is the target).",
    ),
    "relabelled_acc": Column(
        "Accuracy on new labels (%)", "{:.1f}", HIGHER, "the relabelled samples scored against their NEW labels."
    ),
    "clean_acc": Column("Clean test accuracy (%)", "{:.1f}", HIGHER, "test accuracy without the trigger."),
    "attack_success_rate": Column(
        "Attack success (%)",
        "{:.1f}",
        LOWER,
        "triggered test images of other classes predicted as the attacker's target class.",
    ),
    "step": Column(
        "Step α",
        "{:.3g}",
        None,
        "the edit is θ + α·Δ; with the auto step, α maximises the validation objective below (never the test split).",
    ),
    "seconds": Column("Seconds", "{:.2f}", LOWER, "wall time of the solve, the step search and the scoring."),
    "hvps": Column(
        "Hessian-vector products", "{:.0f}", LOWER, "products with the Hessian the solve needed (its cost)."
    ),
    "residual": Column(
        "Residual",
        "{:.1e}",
        LOWER,
        "the solver's relative residual when it stopped (the worst of its solves). At the defaults the solve is "
        "stopped after a few iterations by design — early stopping, damping and the ridge regularise it and edited "
        "better than converged solves (benchmarks/results/defaults_sweep.md) — so 'not converged' is expected there.",
    ),
}
"""Every metric column, in the order shown after ``model`` and ``status`` (Avg. Gap and the vs-retrained columns
first, so that they are visible without scrolling)."""
TEXT_COLUMNS = ("model", "status")


@dataclass(frozen=True)
class MetricsTable:
    """The table as shown: ``frame`` has human column names and raw numbers (NaN where a metric does not apply);
    ``best`` is a boolean frame of the same shape, True where a cell is the best edited value of its column."""

    frame: pd.DataFrame
    best: pd.DataFrame
    keys: tuple[str, ...]


def status_of(outcome: MethodOutcome) -> str:
    """What a reader must know before trusting an edit's row, in words: diverged, the edit's own flags (no-op, step
    at the edge of the search, worse than the original) and the search's warnings, then whether the solve
    converged, with its residual."""
    if outcome.diverged:
        return f"diverged: {outcome.diverged}"
    warnings = outcome.step_search.warnings if outcome.step_search is not None else []
    notes = list(dict.fromkeys([*outcome.flags, *warnings]))
    assert outcome.result is not None  # set unless diverged
    solver = outcome.result.solver_summary()
    residual, iterations = f"residual {solver['rel_residual']:.1e}", counted(solver["iterations"], "iteration")
    notes.append(f"converged ({residual})" if solver["converged"] else f"not converged ({residual} after {iterations})")
    return "; ".join(notes)


def _edit_row(outcome: MethodOutcome, name: str) -> dict:
    """One edit's row, keyed like :data:`COLUMNS` (a diverged edit has only its status and seconds)."""
    row = {"model": name, "status": status_of(outcome), "seconds": outcome.seconds}
    if outcome.diverged:
        return row
    assert outcome.result is not None  # set unless diverged
    solver = outcome.result.solver_summary()
    row.update({**outcome.metrics, "step": outcome.step, "hvps": solver["hvps"], "residual": solver["rel_residual"]})
    row.update(outcome.vs_retrain or {})
    return row


def report_rows(report: EditReport, names: Mapping[str, str]) -> list[dict]:
    """The original, the retrained model (when compared) and every edit, keyed like :data:`COLUMNS`;
    ``names`` maps a method to its display name."""
    rows = [{"model": "original", "status": "", **report.original}]
    if report.retrained is not None:
        source = "cache" if report.retrain_from_cache else f"{report.retrain_seconds:.1f} s"
        rows.append({"model": f"retrained ({source})", "status": "ground truth", **report.retrained})
    rows.extend(_edit_row(o, names[o.method]) for o in report.outcomes)
    return rows


def raw_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """The rows as a frame keyed like :data:`COLUMNS`, in their order; metric columns empty on every row dropped."""
    frame = pd.DataFrame(list(rows))
    keys = [k for k in (*TEXT_COLUMNS, *COLUMNS) if k in frame.columns]
    frame = frame[keys]
    return frame[[k for k in keys if k in TEXT_COLUMNS or frame[k].notna().any()]]


def best_mask(frame: pd.DataFrame, edited: Sequence[int], reference: int | None) -> pd.DataFrame:
    """True at the best edited value of each column (rows ``edited``; ``reference`` is the retrained row, which
    "closest to retrained" columns need — without it they mark nothing). Ties are all marked; a column is left
    unmarked when fewer than two edits have a value or when they are all equal (nothing to choose)."""
    mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for key in frame.columns:
        better = COLUMNS[key].better if key in COLUMNS else None
        values = frame.loc[list(edited), key].dropna() if better else pd.Series(dtype=float)
        if better == RETRAINED:
            target = frame.at[reference, key] if reference is not None else math.nan
            values = (values - target).abs().dropna()
        if len(values) < 2 or np.isclose(values.min(), values.max()):
            continue
        best = values.max() if better == HIGHER else values.min()
        mask.loc[values.index[np.isclose(values, best)], key] = True
    return mask


def metrics_table(report: EditReport, names: Mapping[str, str]) -> MetricsTable:
    """The page's metrics table for ``report`` (see :class:`MetricsTable`)."""
    frame = raw_frame(report_rows(report, names))
    reference = 1 if report.retrained is not None else None
    first_edit = len(frame) - len(report.outcomes)
    edited = [first_edit + i for i, o in enumerate(report.outcomes) if not o.diverged]
    best = best_mask(frame, edited, reference)
    keys = tuple(frame.columns)
    labels = {k: COLUMNS[k].label for k in keys if k in COLUMNS}
    return MetricsTable(frame.rename(columns=labels), best.rename(columns=labels), keys)


def cell_text(value: object, key: str, best: bool = False) -> str:
    """How one cell reads: blank when empty, a metric by its column's format, ★ after the best value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = COLUMNS[key].fmt.format(value) if key in COLUMNS else str(value)
    return f"{text} {BEST_MARK}" if best else text


def styled(frame: pd.DataFrame, keys: Sequence[str], best: pd.DataFrame | None = None) -> Styler:
    """``frame`` (columns named for ``keys``) as st.dataframe should draw it: every cell by :func:`cell_text`, the
    ``best`` cells bold, tinted and starred; the numbers underneath stay numbers (sortable)."""
    best = best if best is not None else pd.DataFrame(False, index=frame.index, columns=frame.columns)
    styler = frame.style
    for key, label in zip(keys, frame.columns, strict=True):
        styler = styler.format(lambda v, k=key: cell_text(v, k), subset=[label])
        marked = best.index[best[label]]
        if len(marked):
            styler = styler.format(lambda v, k=key: cell_text(v, k, best=True), subset=(marked, [label]))
    return styler.apply(lambda _: best.map(lambda marked: BEST_STYLE if marked else ""), axis=None)


def legend(keys: Sequence[str], request: EditRequest, backdoor: bool, methods: Sequence[str] = ()) -> str:
    """Markdown explaining the shown columns (what each measures and which value is best), the ★, the step
    search's validation objective for this kind of question, and each of ``methods`` in one line."""
    gap_keys = ", ".join(COLUMNS[k].label.split(" (")[0] for k in AVG_GAP_KEYS) + " (those the question has)"
    lines = [
        f"{BEST_MARK} (bold) marks the best edited model in each column, among the edits only; no mark when fewer "
        "than two edits have a value or all are equal. For forget accuracy and MIA the best is the value closest to "
        "the retrained model's (marked only when it is compared), not the largest.",
        "- **status** — what to know before trusting the row: diverged, a no-op, a step at the edge of its search, "
        "worse than the original on the retained data; whether the solve converged and its residual.",
    ]
    for key in keys:
        if key in COLUMNS:
            column = COLUMNS[key]
            best = f" *Best: {column.better}.*" if column.better else ""
            lines.append(f"- **{column.label}** — {column.meaning.format(gap_keys=gap_keys)}{best}")
    question = "undoing the backdoor (a label change)" if backdoor else f"this kind of question ({request.kind})"
    lines.append(f"- **Validation objective** of the auto step for {question}: {request.OBJECTIVE}.")
    lines += [f"- **{METHOD_LABELS[m]}** — {METHOD_SUMMARIES[m]}." for m in dict.fromkeys(methods)]
    return "\n".join(lines)


@dataclass(frozen=True)
class HistoryEntry:
    """One finished edit as the run history keeps it: its table rows and its JSON report — no model, no
    probabilities, so a long session stays small."""

    rows: tuple[dict, ...]
    report_json: str


HISTORY_KEYS = ("forget_acc", "retain_acc", "test_acc", "avg_gap", "step", "seconds")
"""The metrics the history compares between runs."""


def question_text(request: EditRequest, classes: Sequence[str], backdoor: bool) -> str:
    """The question in a few words, e.g. ``remove class 3`` or ``remove 8 training samples``."""
    question = request.question(tuple(classes))
    return f"undo the backdoor ({question})" if backdoor else question


def settings_text(report: EditReport) -> str:
    """The settings that differ most between runs, in one line."""
    config = report.config
    step = "auto α" if config.step == "auto" else f"α = {config.step:g}"
    retrained = " · vs retrained" if report.retrained is not None else ""
    return (
        f"{config.selection.method} {config.selection.ratio:.0%} · {step} · at most "
        f"{counted(config.solver.maxiter, 'iteration')} · {config.curvature.samples} Hessian samples · "
        f"δ {config.curvature.damping:g}{retrained}"
    )


def history_entry(report: EditReport, names: Mapping[str, str], question: str, report_json: str) -> HistoryEntry:
    """What the history keeps of a finished edit: one row per method (question, settings, main metrics, status)."""
    settings = settings_text(report)
    rows = []
    for row, outcome in zip(report_rows(report, names)[-len(report.outcomes) :], report.outcomes, strict=True):
        kept = {k: row[k] for k in HISTORY_KEYS if k in row}
        status = "diverged" if outcome.diverged else row["status"]
        rows.append({"question": question, "model": row["model"], "settings": settings, **kept, "status": status})
    return HistoryEntry(tuple(rows), report_json)


def history_frame(entries: Sequence[HistoryEntry]) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """All runs side by side, one row per run and method (numbered from 1), and the column keys; columns named
    like the metrics table's."""
    rows = [{"run": n, **row} for n, entry in enumerate(entries, start=1) for row in entry.rows]
    frame = pd.DataFrame(rows)
    keys = [k for k in ("run", "question", "model", "settings", *HISTORY_KEYS, "status") if k in frame.columns]
    frame = frame[keys]
    return frame.rename(columns={k: COLUMNS[k].label for k in keys if k in COLUMNS}), tuple(keys)


def combined_json(entries: Sequence[HistoryEntry]) -> str:
    """Every run's JSON report (as ``gif remove --json``) in one JSON list, in run order."""
    return "[\n" + ",\n".join(entry.report_json for entry in entries) + "\n]"
