"""Issue 16: our exact influence scores beside dattri's own IF attributor, on the LDS benchmark's logistic regression.

    python -m benchmarks.dattri_check [--quick] [--test-points N] [--out DIR]

dattri's ``IFAttributorExplicit`` forms the Hessian of the mean training cross-entropy with ``torch.func``, adds its
``regularization`` λ·I and inverts it densely; its score of training sample i for test point z is
∇ℓ_iᵀ(H + λI)⁻¹∇ℓ_z. Ours (:data:`gif_core.scores.SCORE_FORMULA`, method ``if``) is ∇ℓ_zᵀ(H + λ_wd·I + δI)⁻¹∇ℓ_i/n,
H by Hessian-vector products over the whole training set and a Krylov solve — no dense matrix. With dattri's
regularization set to the training weight decay plus our damping δ both name the same matrix, so n·ours must equal
dattri's scores, sign included (positive = helpful in both) — up to one difference of convention, a constant per test
point. Our ℓ_i holds the training objective's weight decay (λ/2)|θ|² (:mod:`gif_core.curvature`: that makes the removal
identity exact for a model retrained with the same λ), so our ∇ℓ_i = ∇CE_i + λθ, while dattri differentiates the bare
cross-entropy; the test side is the bare ∇CE_z in both. Hence

    n·ours_i − dattri_i = λ θᵀ(H + λI + δI)⁻¹∇CE_z        (the same for every training sample i),

which shifts every score of z alike: no ranking and no LDS over equal-size subsets changes, but scores near zero can
change sign. The table predicts that offset independently (one more MINRES solve per test point), gives it beside the
measured mean of n·ours − dattri, and compares n·ours − offset with dattri: Spearman's ρ, the relative difference
‖n·ours − offset − dattri‖/‖dattri‖ and the share of equal signs (raw and after the offset); then the LDS of each (the
protocol and subsets of :mod:`benchmarks.lds`, dattri's ``lds`` metric) over the same test points.

The model is :mod:`benchmarks.lds`'s logistic regression (bundled MNIST, 3,500 training images, p = 7,850; dattri's
dense inverse of a 7,850² Hessian is affordable there, not on the MLP or the CNN). ``--quick``: the digits
logistic regression of ``benchmarks.lds --quick``.

Writes dattri_check.md / dattri_check.json into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from scipy import stats
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import RESULTS, markdown_table, provenance, write_results
from benchmarks.lds import FRACTION, FULL, QUICK, LdsSetting, scores_of, subsets, targets
from benchmarks.paper_setup import Trained, trained
from gif_core.browse import BrowserConfig, InfluenceBrowser
from gif_core.operators import SymmetricOperator
from gif_core.solvers import SolverConfig, solve_symmetric

CHECK_SOLVER = SolverConfig(rtol=1e-8, maxiter=1000)
"""Our solve, tight: the comparison is with a dense inverse."""


def dattri_scores(original: Trained, test_rows: torch.Tensor, regularization: float) -> torch.Tensor:
    """[n_train, test points]: dattri's ``IFAttributorExplicit`` scores, in float64 on a copy of the model."""
    from dattri.algorithm.influence_function import IFAttributorExplicit
    from dattri.task import AttributionTask

    model = copy.deepcopy(original.model).double().eval()

    def loss(params, data):
        inputs, labels = data
        return F.cross_entropy(torch.func.functional_call(model, params, (inputs,)), labels)

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = IFAttributorExplicit(task, regularization=regularization)
    train = TensorDataset(original.train.inputs.double(), original.train.labels)
    test = original.bundle.test
    attributor.cache(DataLoader(train, batch_size=len(train)))  # the Hessian of the mean loss over every sample
    scores = attributor.attribute(
        DataLoader(train, batch_size=256),
        DataLoader(TensorDataset(test.inputs[test_rows].double(), test.labels[test_rows]), batch_size=len(test_rows)),
    )
    return scores.detach()


OFFSET_RESIDUAL = 1e-5
"""The largest relative residual accepted of the offset's solve (the scores' own solve stalls where it does)."""


def convention_offsets(browser: InfluenceBrowser, original: Trained, test_rows: torch.Tensor) -> torch.Tensor:
    """[test points]: λ θᵀ(H + λI + δI)⁻¹∇CE_z, what our λθ in every ∇ℓ_i adds to n·score_i (module docstring)."""
    curvature = browser.curvature
    operator = SymmetricOperator(curvature.hvp, curvature.space.numel, curvature.device, curvature.dtype)
    test = original.bundle.test
    out = []
    for row in test_rows.tolist():
        gradient = curvature.gradient(test.inputs[row : row + 1], test.labels[row : row + 1], regulariser=False)
        solution, report = solve_symmetric(operator, gradient, "minres", CHECK_SOLVER)
        if report.rel_residual > OFFSET_RESIDUAL:  # float32 products stall near 1e-7, short of rtol 1e-8
            raise RuntimeError(f"The offset's solve for test point {row} stalled: {report}")
        out.append(curvature.config.weight_decay * float(curvature.theta.double() @ solution.double()))
    return torch.tensor(out, dtype=torch.float64)


def compare(lds: LdsSetting, test_points: int, log=print) -> tuple[list[dict], dict]:
    """Per test point: agreement of our exact IF with dattri's; and each one's LDS over those points."""
    from dattri.metric import lds as dattri_lds

    original = trained(lds.setting, 0)
    n = len(original.train)
    kept = subsets(n, lds.subsets, FRACTION)
    order = torch.randperm(len(original.bundle.test), generator=torch.Generator().manual_seed(1))
    test_rows = order[:test_points]  # the first of benchmarks.lds's test points
    truth = targets(original, kept, test_rows).double()
    weight_decay = original.card.recipe["weight_decay"]
    config = BrowserConfig(hessian_samples=n, damping=lds.damping, solver=lds.solver)  # dattri's H: every sample
    browser = InfluenceBrowser(original.model, original.train, weight_decay, config)
    start = time.perf_counter()
    ours = scores_of(browser, original, test_rows, "if")
    our_seconds = time.perf_counter() - start
    offsets = convention_offsets(browser, original, test_rows)
    start = time.perf_counter()
    theirs = dattri_scores(original, test_rows, weight_decay + lds.damping)
    their_seconds = time.perf_counter() - start
    rows = []
    for column, row in enumerate(test_rows.tolist()):
        mine, other, offset = n * ours[:, column], theirs[:, column], float(offsets[column])
        shifted = mine - offset
        rows.append(
            {
                "test point": row,
                "spearman": float(stats.spearmanr(mine.numpy(), other.numpy()).statistic),
                "relative difference": float((mine - other).norm() / other.norm()),
                "same sign": float((mine.sign() == other.sign()).double().mean()),
                "offset predicted": offset,
                "offset measured": float((mine - other).mean()),
                "relative difference after offset": float((shifted - other).norm() / other.norm()),
                "same sign after offset": float((shifted.sign() == other.sign()).double().mean()),
            }
        )
        log(f"test point {row}: {rows[-1]}")
    our_lds, _ = dattri_lds(ours, (truth, kept))
    their_lds, _ = dattri_lds(theirs, (truth, kept))
    summary = {
        "model": lds.setting.label,
        "n": n,
        "solver rtol": lds.solver.rtol,
        "regularization": weight_decay + lds.damping,
        "test points": test_points,
        "subsets": lds.subsets,
        "ours LDS": statistics.fmean(float(v) for v in our_lds),
        "dattri LDS": statistics.fmean(float(v) for v in their_lds),
        "ours seconds": our_seconds,
        "dattri seconds": their_seconds,
    }
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits logistic regression of benchmarks.lds --quick")
    parser.add_argument("--test-points", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    meta = provenance()
    lds = QUICK[0] if args.quick else FULL[0]
    assert lds.setting.arch == "logreg"  # dattri's dense inverse is affordable for the linear model only
    lds = dataclasses.replace(lds, test_points=min(args.test_points, lds.test_points), solver=CHECK_SOLVER)
    rows, summary = compare(lds, lds.test_points)
    body = "\n".join(
        [
            "# Our exact IF scores beside dattri's IFAttributorExplicit (issue 16)",
            "",
            f"{summary['model']}, n = {summary['n']}, the Hessian over every training sample, "
            f"(H + {summary['regularization']:g}·I) in both (our solve: MINRES to rtol {summary['solver rtol']:g}); "
            "n·ours against dattri's scores per test point. Offset: λθᵀ(H + λI + δI)⁻¹∇CE_z, the constant our "
            "λθ in every training gradient adds (predicted by a solve; measured as the mean of n·ours − dattri).",
            "",
            markdown_table(rows, list(rows[0])),
            "",
            markdown_table(
                [summary], ["test points", "subsets", "ours LDS", "dattri LDS", "ours seconds", "dattri seconds"]
            ),
            "",
            "LDS: the protocol of benchmarks.lds (subsets of "
            f"{FRACTION:.0%}, target −ℓ(z)), dattri's metric, over these test points only (benchmarks/results/"
            "lds.md has the full set).",
        ]
    )
    path = write_results("dattri_check", body, {"rows": rows, "summary": summary}, args.out, meta)
    print(path.read_text())


if __name__ == "__main__":
    main()
