"""The ``gif`` command: train models, inspect checkpoints, and answer what-if questions from the terminal.

    gif train --arch cnn --data mnist-bundled --out PATH
    gif info PATH
    gif card WEIGHTS --arch resnet18 --data mnist-bundled --epochs 20   (or WEIGHTS.pt2: an exported program)
    gif remove --class 3 --method gif,if --retrain --json report.json

Bad arguments print one line starting with ``gif: error:`` and exit with status 2; nothing is written.

``torchrun --nproc-per-node N -m gif_core remove …`` shards the Hessian sample and the gradients over N processes
(gloo on the CPU, NCCL with one GPU per process; see :mod:`gif_core.distributed`): every rank computes the same edit, the solver replicated on each, and the
edits are checked to be bit-identical across ranks; only rank 0 prints and writes files. ``--retrain`` is refused
there: retraining runs in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from torch.nn.utils import parameters_to_vector

from gif_core import distributed
from gif_core.backdoor import BackdoorSpec, Trigger
from gif_core.checkpoints import (
    card_path_for,
    check_new_checkpoint_path,
    checkpoint_files,
    checkpoint_id,
    load_checkpoint,
    load_weights,
    read_weights_file,
)
from gif_core.constraints import ConfigError
from gif_core.data import DATASETS
from gif_core.experiment import EditConfig, EditReport
from gif_core.exported import EXPORTED_ARCH
from gif_core.influence import METHOD_LABELS, METHOD_SUMMARIES, METHODS, EstimatorConfig
from gif_core.model_card import CardForm, ModelCard, card_from_form
from gif_core.models import ARCHITECTURES, is_architecture, unknown_architecture
from gif_core.outputs import check_new_outputs, write_new_files
from gif_core.problem import DTYPES, HESSIAN_DATA, HessianConfig
from gif_core.requests import ClassRemoval, LabelChange, SampleRemoval, parse_label_change, parse_sample_removal
from gif_core.selection import BUDGETS, SelectionConfig
from gif_core.selection import METHODS as SELECTORS
from gif_core.solvers import LEAST_SQUARES_METHODS, SYMMETRIC_METHODS
from gif_core.train import Recipe, resolve_device
from gif_core.workspace import edited_card, open_workspace_path
from gif_core.zoo import bundled_model_path, default_model_path, train_and_save

DEFAULTS = EditConfig()
"""The library's defaults (chosen by benchmarks/defaults.py), shown as the command's defaults."""


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


def _architecture(name: str) -> str:
    """argparse's type of ``--arch``: ours or torchvision's registry (no list to keep by hand)."""
    if not is_architecture(name):
        raise argparse.ArgumentTypeError(unknown_architecture(repr(name)))
    return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gif", description="Generalized Influence Functions explorer.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and save it with its model card")
    train.add_argument(
        "--arch",
        default="cnn",
        type=_architecture,
        help=f"{', '.join(ARCHITECTURES)}, or any torchvision classification model by name (e.g. mobilenet_v3_small)",
    )
    train.add_argument("--data", default="mnist-bundled", choices=DATASETS)
    train.add_argument("--root", help="local folder of the data set (mnist, cifar10, svhn, imagefolder)")
    train.add_argument("--out", required=True, help="new .safetensors file (never overwritten)")
    train.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--backdoor-target", type=int, help="poison the training split towards this class")
    train.add_argument("--backdoor-fraction", type=float, default=0.1)

    info = commands.add_parser("info", help="show a checkpoint's model card")
    info.add_argument("path")

    card = commands.add_parser(
        "card",
        help="write the model card of weights trained elsewhere (a state dict, or a .pt2 exported program)",
        description="The card is written beside the weights (same name, .json) and checked by loading the weights "
        "into the model it describes, strictly. Input shape and classes are the data set's; --classes and "
        "--input-shape, when given, are checked against it.",
    )
    card.add_argument("weights", help=".safetensors/.pt/.pth state dict, or a .pt2 from torch.export.save")
    card.add_argument(
        "--arch",
        type=_architecture,
        help="the state dict's architecture (ours or any torchvision classification model); not for a .pt2",
    )
    card.add_argument(
        "--data",
        "--dataset",
        dest="data",
        required=True,
        choices=DATASETS,
        help="the data set the weights were trained on",
    )
    card.add_argument("--classes", type=int, help="the model's number of classes (checked: the data set's)")
    card.add_argument(
        "--input-shape", type=_input_shape, help="C,H,W of one input, e.g. 1,28,28 (checked: the data set's)"
    )
    card.add_argument("--data-root", help="local folder of the data set (mnist, cifar10, svhn, imagefolder)")
    card.add_argument("--split-seed", type=int, default=0, help="the seed that split the data set")
    card.add_argument(
        "--epochs", type=int, help="how the weights were trained (with the options below); without it the card has "
        "no recipe and the model cannot be retrained for --retrain",
    )  # fmt: skip
    card.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    card.add_argument("--lr", type=float, default=2e-3)
    card.add_argument("--weight-decay", type=float, default=1e-4)
    card.add_argument("--batch-size", type=int, default=64)
    card.add_argument("--seed", type=int, default=0)
    card.add_argument("--notes", default="")

    remove = commands.add_parser("remove", help="what if some training data had not been there?")
    remove.add_argument(
        "--model", help="checkpoint (default: the bundled MNIST CNN; with --backdoor its backdoored twin)"
    )
    question = remove.add_mutually_exclusive_group(required=True)
    question.add_argument("--class", dest="cls", type=int, help="remove every training sample of this class")
    question.add_argument("--samples", help="remove training rows I,J,…")
    question.add_argument("--relabel", help="change labels: I:L,J:M,…")
    question.add_argument("--backdoor", action="store_true", help="relabel the poisoned samples to their true labels")
    remove.add_argument(
        "--method",
        default="gif",
        help="comma-separated, from: " + "; ".join(f"{m} ({METHOD_SUMMARIES[m]})" for m in METHODS),
    )
    remove.add_argument("--selector", default=DEFAULTS.selection.method, choices=SELECTORS)
    remove.add_argument(
        "--ratio", type=float, default=DEFAULTS.selection.ratio, help="share of parameters GIF/FIF/PIF move"
    )
    remove.add_argument(
        "--budget", default=DEFAULTS.selection.budget, choices=BUDGETS, help="the ratio per layer or overall"
    )
    remove.add_argument(
        "--solver",
        default=DEFAULTS.solver.least_squares_solver,
        choices=LEAST_SQUARES_METHODS,
        help="GIF's solver (on a GPU, lsmr and cgls run as their torch twins lsmr-torch, cgls-torch)",
    )
    remove.add_argument(
        "--symmetric-solver",
        default=DEFAULTS.solver.symmetric_solver,
        choices=SYMMETRIC_METHODS,
        help="IF/PIF/FIF/SIF's solver",
    )
    remove.add_argument(
        "--step", default=str(DEFAULTS.step), help="step scale α, or 'auto' (searched on the validation split)"
    )
    remove.add_argument(
        "--step-cap", type=float, default=DEFAULTS.step_search.cap, help="largest α the auto search tries"
    )
    remove.add_argument(
        "--hessian-samples", type=int, default=DEFAULTS.curvature.samples, help="rows of the Hessian sample"
    )
    remove.add_argument(
        "--hessian-data",
        default=DEFAULTS.curvature.data,
        choices=HESSIAN_DATA,
        help="retained: H of the edited training set; all: of the training set as it was (Koh & Liang)",
    )
    remove.add_argument("--damping", type=float, default=DEFAULTS.curvature.damping, help="δ in H + δI")
    remove.add_argument(
        "--gauss-newton", action="store_true", help="the Gauss-Newton matrix instead of the exact Hessian"
    )
    remove.add_argument(
        "--dtype",
        choices=DTYPES,
        default=DEFAULTS.curvature.dtype,
        help="precision of the Hessian-vector products (default: the model's own)",
    )
    remove.add_argument(
        "--ridge", type=float, default=DEFAULTS.solver.gif_ridge, help="GIF's ρ in min ‖H_:T x − g‖² + ρ‖x‖²"
    )
    remove.add_argument("--maxiter", type=int, default=DEFAULTS.solver.maxiter, help="solver iterations at most")
    remove.add_argument("--rtol", type=float, default=DEFAULTS.solver.rtol, help="solver tolerance (relative residual)")
    remove.add_argument(
        "--iterations",
        type=int,
        default=DEFAULTS.iterations,
        help="re-linearised steps (1 = one first-order step; see gif_core.experiment)",
    )
    remove.add_argument("--retrain", action="store_true", help="also retrain without the data and report gaps")
    remove.add_argument("--seed", type=int, default=0)
    remove.add_argument("--data-root", help="local folder of the model's data set, where it is not bundled")
    remove.add_argument("--save", help="save the first method's edited model to this NEW .safetensors file")
    remove.add_argument("--json", help="write the JSON report to this new file")
    remove.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = {"train": _train, "info": _info, "card": _card, "remove": _remove}[args.command]
    # under torchrun, `remove` joins the launcher's process group (NCCL where models load onto the GPU, else gloo);
    # every rank fails alike, and rank 0 says why
    remove = args.command == "remove"
    group = distributed.process_group_from_env(resolve_device(None).type) if remove else contextlib.nullcontext()
    with group:
        try:
            return command(args)
        except (UsageError, ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as exc:
            if distributed.is_lead():
                print(f"gif: error: {exc}", file=sys.stderr)
            return 2


def _train(args: argparse.Namespace) -> int:
    recipe = Recipe(args.optimizer, args.lr, 0.9, args.weight_decay, args.epochs, args.batch_size, args.seed)
    backdoor = None
    if args.backdoor_target is not None:
        backdoor = BackdoorSpec(args.backdoor_target, args.backdoor_fraction, Trigger("checkerboard"), args.seed)
    check_new_outputs(_checkpoint_outputs(args.out, "--out"))  # before any training, not after it
    path = train_and_save(args.arch, args.data, recipe, args.out, root=args.root, backdoor=backdoor)
    print(f"saved {path}")
    return _info(argparse.Namespace(path=str(path)))


def _info(args: argparse.Namespace) -> int:
    _, card = load_checkpoint(args.path)
    print(f"{args.path}  (id {checkpoint_id(args.path)})")
    print(card.to_json())
    return 0


def _card(args: argparse.Namespace) -> int:
    weights = Path(args.weights)
    exported = weights.suffix.lower() == ".pt2"
    if exported and args.arch not in (None, EXPORTED_ARCH):
        raise UsageError(f"{weights.name} is an exported program: its graph is its architecture; drop --arch")
    if not exported and args.arch is None:
        raise UsageError("--arch is required for a state dict: the architecture its weights belong to")
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} not found; check the path")
    (card_path,) = check_new_outputs([(str(card_path_for(weights)), "the model card")])
    recipe = None
    if args.epochs is not None:
        recipe = Recipe(args.optimizer, args.lr, 0.9, args.weight_decay, args.epochs, args.batch_size, args.seed)
    arch = EXPORTED_ARCH if exported else args.arch
    form = CardForm(arch, args.data, args.split_seed, recipe, args.notes)
    card = dataclasses.replace(card_from_form(form, args.data_root), notes=args.notes)
    _check_stated_shape(card, args.classes, args.input_shape)
    load_weights(card, read_weights_file(weights), weights.name)  # strictly: every key and shape, finite
    write_new_files({card_path: card.to_json().encode()})
    print(f"wrote {card_path}")
    return _info(argparse.Namespace(path=str(weights)))


def _input_shape(text: str) -> tuple[int, ...]:
    """``C,H,W`` (or any comma-separated positive sizes) as a tuple; argparse reports the error's message."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated sizes such as 1,28,28") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be a positive whole number, e.g. 1,28,28")
    return shape


def _check_stated_shape(card: ModelCard, classes: int | None, input_shape: tuple[int, ...] | None) -> None:
    """A stated class count or input shape that is not the data set's is an error: the card describes the model on
    that data, whose images and labels every edit feeds it."""
    stated = {"--classes": (classes, card.num_classes), "--input-shape": (input_shape, tuple(card.input_shape))}
    wrong = [f"{flag} {given} (the data set's: {actual})" for flag, (given, actual) in stated.items()
             if given is not None and given != actual]  # fmt: skip
    if wrong:
        raise UsageError(
            f"{'; '.join(wrong)}: data set {card.dataset!r} has {card.num_classes} classes of "
            f"{'×'.join(map(str, card.input_shape))} inputs; name the data set the weights were trained on"
        )


def _request(args: argparse.Namespace) -> ClassRemoval | SampleRemoval | LabelChange | None:
    if args.cls is not None:
        return ClassRemoval(args.cls)
    if args.samples is not None:
        return parse_sample_removal(args.samples)
    if args.relabel is not None:
        return parse_label_change(args.relabel)
    return None  # backdoor: built once the poisoned training set is known


FLAGS = {
    ("SelectionConfig", "ratio"): "--ratio",
    ("HessianConfig", "samples"): "--hessian-samples",
    ("HessianConfig", "damping"): "--damping",
    ("HessianConfig", "seed"): "--seed",
    ("SelectionConfig", "seed"): "--seed",
    ("EstimatorConfig", "gif_ridge"): "--ridge",
    ("SolverConfig", "rtol"): "--rtol",
    ("SolverConfig", "maxiter"): "--maxiter",
    ("EditConfig", "iterations"): "--iterations",
}
"""The flag of each configuration field a number typed on the command line sets (named in its error)."""


def _config(args: argparse.Namespace) -> EditConfig:
    """The :class:`EditConfig` the flags ask for; a value outside a setting's constraints is a usage error that
    names its flag."""
    try:
        return _config_of(args)
    except ConfigError as error:
        flag = FLAGS.get((error.config, error.field))
        if flag is None:
            raise
        raise UsageError(error.naming(flag)) from error


def _config_of(args: argparse.Namespace) -> EditConfig:
    methods = tuple(m.strip().lower() for m in args.method.split(",") if m.strip())
    if args.step == "auto":
        step: float | str = "auto"
    else:
        try:
            step = float(args.step)
        except ValueError as exc:
            raise UsageError(f"--step must be a positive number or 'auto', got {args.step!r}") from exc
    return EditConfig(
        methods=methods,
        selection=SelectionConfig(args.selector, args.ratio, args.budget),
        curvature=HessianConfig(
            data=args.hessian_data,
            samples=args.hessian_samples,
            damping=args.damping,
            gauss_newton=args.gauss_newton,
            dtype=args.dtype,
        ),
        solver=EstimatorConfig(
            symmetric_solver=args.symmetric_solver,
            least_squares_solver=args.solver,
            gif_ridge=args.ridge,
            rtol=args.rtol,
            maxiter=args.maxiter,
        ),
        step=step,
        step_search=dataclasses.replace(DEFAULTS.step_search, cap=args.step_cap),
        iterations=args.iterations,
    ).with_seed(args.seed)


def _remove(args: argparse.Namespace) -> int:
    """Answer the question; under torchrun every rank computes it and only rank 0 (the lead) reports."""
    world = distributed.world()
    if world is not None and args.retrain:
        raise UsageError(
            f"--retrain is not available under torchrun ({world.size} processes): retraining runs in one process; "
            "run the command without torchrun to compare with retraining"
        )
    lead = world is None or world.lead
    config = _config(args)
    outputs = _remove_outputs(args)
    model_path = (
        Path(args.model)
        if args.model
        else (bundled_model_path("mnist_cnn_backdoor") if args.backdoor else default_model_path())
    )
    workspace = open_workspace_path(model_path, args.data_root)
    request = _request(args)
    if args.backdoor:
        if workspace.backdoor_request is None:
            raise UsageError(f"{model_path} was not trained with a backdoor (its card has no 'backdoor' entry)")
        request = workspace.backdoor_request
    assert request is not None  # argparse requires one of --class, --samples, --relabel, --backdoor
    report = workspace.answer(
        request,
        config,
        retrain=args.retrain,
        progress=None if args.quiet or not lead else lambda message, _f: print(f"… {message}", file=sys.stderr),
        show_bar=not args.quiet,
    )
    for outcome in report.outcomes:  # the replicated solves must have agreed to the bit
        if outcome.diverged:
            continue
        assert outcome.model is not None and outcome.result is not None  # set unless diverged
        edited = parameters_to_vector(outcome.model.parameters())
        distributed.check_replicated(f"The {METHOD_LABELS[outcome.method]} edit", outcome.result.delta, edited)
    if not lead:
        return 0
    print(format_report(report))
    contents = {}  # every output serialised before the first is written: a failure leaves no file behind
    if "--json" in outputs:
        contents[outputs["--json"]] = (report.to_json() + "\n").encode()
    if "--save" in outputs:
        first = report.outcomes[0]
        if first.diverged:
            raise UsageError(
                f"the {METHOD_LABELS[first.method]} edit diverged ({first.diverged}); nothing was saved (no --save and "
                "no --json file): try a smaller --step, more --damping, or step 'auto'"
            )
        assert first.model is not None  # set unless diverged
        card = edited_card(workspace, first, report.request.describe())
        contents.update(checkpoint_files(first.model, card, outputs["--save"]))
    write_new_files(contents)
    for flag, what in (("--json", "report written to"), ("--save", "edited model saved to")):
        if flag in outputs:
            print(f"{what} {outputs[flag]}")
    return 0


def _remove_outputs(args: argparse.Namespace) -> dict[str, Path]:
    """The files ``gif remove`` will write, checked before any work (see :mod:`gif_core.outputs`)."""
    named: list[tuple[str, str]] = []
    if args.json is not None:
        named.append((args.json, "--json"))
    if args.save is not None:
        named += _checkpoint_outputs(args.save, "--save")
    paths = check_new_outputs(named)
    return {flag: path for (_, flag), path in zip(named, paths, strict=True)}


def _checkpoint_outputs(path: str, flag: str) -> list[tuple[str, str]]:
    """The two files a checkpoint named by ``flag`` is saved as (weights, card), for :func:`check_new_outputs`."""
    if not path.strip():
        raise UsageError(f"{flag} needs a file name, got an empty one")
    check_new_checkpoint_path(path)
    return [(path, flag), (str(card_path_for(path)), f"the model card of {flag}")]


def format_report(report: EditReport) -> str:
    """The report as a readable terminal table."""
    keys = ["forget_acc", "retain_acc", "test_acc", "f1"]
    extra_keys = [k for k in ("relabelled_acc", "clean_acc", "attack_success_rate", "mia") if k in report.original]
    header = ["model", "step", *keys, *extra_keys, "hvps", "converged", "seconds"]
    if report.retrained is not None:
        header += ["agree%", "KL", "avg_gap"]
    rows = [["original", "", *(report.original[k] for k in keys + extra_keys), "", "", ""]]
    if report.retrained is not None:
        rows[0] += ["", "", ""]
        rows.append(
            [
                "retrained",
                "",
                *(report.retrained[k] for k in keys + extra_keys),
                "",
                "",
                report.retrain_seconds or "",
                *[""] * 3,
            ]
        )
    for o in report.outcomes:
        if o.diverged:
            row = [METHOD_LABELS[o.method], "diverged", *["-"] * (len(keys) + len(extra_keys) + 2), o.seconds]
            rows.append(row + ["-"] * 3 if report.retrained is not None else row)
            continue
        assert o.result is not None  # set unless diverged
        solver = o.result.solver_summary()
        name = METHOD_LABELS[o.method] + (
            f" {o.result.selection.ratio_asked:.0%}" if o.method in ("gif", "fif", "pif") else ""
        )
        row = [name, o.step, *(o.metrics[k] for k in keys + extra_keys), solver["hvps"], solver["converged"], o.seconds]
        if o.vs_retrain is not None:
            row += [o.vs_retrain["agreement"], o.vs_retrain["kl"], o.vs_retrain["avg_gap"]]
        rows.append(row)

    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    table = [header, *[[cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"Request: {_short(report.request.describe())}"]
    if report.selection is not None:
        notes.append(_selection_line(report.selection.describe()))
    for o in report.outcomes:
        if o.diverged:
            notes.append(f"{METHOD_LABELS[o.method]} diverged: {o.diverged}")
        else:
            warnings = o.step_search.warnings if o.step_search is not None else []
            notes += [f"{METHOD_LABELS[o.method]}: {w}" for w in dict.fromkeys([*o.flags, *warnings])]
    methods = dict.fromkeys(o.method for o in report.outcomes)
    legend = [f"{METHOD_LABELS[m]}: {METHOD_SUMMARIES[m]}" for m in methods]
    return "\n".join(notes + lines + legend)


def _selection_line(described: dict) -> str:
    """Per layer: whole units selected of all, and parameters selected of all."""
    layers = ", ".join(
        f"{name}: {l['units_selected']}/{l['units']} units ({l['selected']:,}/{l['params']:,} params)"
        for name, l in described["layers"].items()
    )
    return (
        f"Selection ({described['method']}, {described['ratio_asked']:.0%} asked, "
        f"{described['ratio_obtained']:.2%} obtained): {layers}"
    )


def _short(description: dict, keep: int = 8) -> str:
    """The request with long index lists abbreviated (the JSON report keeps them whole)."""
    parts = []
    for key, value in description.items():
        if isinstance(value, list) and len(value) > keep:
            value = f"[{', '.join(map(str, value[:keep]))}, … ({len(value)} in all)]"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
