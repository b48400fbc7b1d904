"""Shared fixtures: tiny float64 models and data, and an independent dense Hessian of the training objective."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F


def tiny_mlp(seed: int = 0, n_in: int = 4, hidden: int = 8, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).double()


def tiny_convnet(seed: int = 0) -> nn.Module:
    """1×6×6 inputs → Conv(1→2, 3×3) → tanh → Linear(32→3): 119 parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()


def blobs(n: int = 60, n_in: int = 4, n_classes: int = 3, seed: int = 0, image: bool = False) -> SimpleNamespace:
    """Separable-ish Gaussian blobs (float64), as a training set with ``inputs`` and ``labels``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    shape = (n, 1, 6, 6) if image else (n, n_in)
    centres = torch.randn((n_classes, *shape[1:]), generator=generator, dtype=torch.float64)
    inputs = centres[labels] + 0.7 * torch.randn(shape, generator=generator, dtype=torch.float64)
    return SimpleNamespace(inputs=inputs, labels=labels)


def dense_objective(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float):
    """L(θ) = mean CE + (λ/2)|θ|² as a function of the flat θ, written independently of gif_core."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def objective(theta: torch.Tensor) -> torch.Tensor:
        pieces = dict(zip(names, (t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True)), strict=True))
        logits = torch.func.functional_call(model, pieces, (inputs,))
        return F.cross_entropy(logits, labels) + 0.5 * weight_decay * theta.square().sum()

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return objective, theta


def dense_hessian(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float) -> torch.Tensor:
    objective, theta = dense_objective(model, inputs, labels, weight_decay)
    return torch.autograd.functional.hessian(objective, theta)


def dense_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float) -> torch.Tensor:
    objective, theta = dense_objective(model, inputs, labels, weight_decay)
    return torch.autograd.functional.jacobian(objective, theta)


def fit_logreg(inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float, init: nn.Module | None = None):
    """L2-regularised multinomial logistic regression trained to its exact optimum of mean CE + (λ/2)|θ|² (full-batch
    L-BFGS, float64), written independently of gif_core. ``init`` (trained in place) is the starting model, else a
    fresh ``nn.Linear``."""
    model = init or nn.Linear(inputs.shape[1], int(labels.max()) + 1).double()
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        theta = torch.cat([p.reshape(-1) for p in model.parameters()])
        loss = F.cross_entropy(model(inputs), labels) + 0.5 * weight_decay * theta.square().sum()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


MACHINE_TORCH_THREADS = torch.get_num_threads()
"""torch's thread count before the suite changed it (its default: one per core, or ``OMP_NUM_THREADS``)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "torch_threads(n): run the test with n torch threads instead of the suite's one; without n, with "
        "MACHINE_TORCH_THREADS",
    )


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_for_the_session():
    """One torch thread from the start, so module- and session-scoped fixtures (set up before any test's own
    fixtures) compute with it too; the machine's setting is restored at the end."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(MACHINE_TORCH_THREADS)


@pytest.fixture(autouse=True)
def one_torch_thread(request):
    """Every test runs with one torch thread: the suite's matrices are small, and a second thread only adds
    contention on a shared 2-core machine (other tests, other processes). A test that needs more threads says so
    with ``@pytest.mark.torch_threads(n)`` (or sets them itself, as the distributed benchmark does); the count
    before the test is restored after it either way, so no test leaks its setting into the next."""
    marker = request.node.get_closest_marker("torch_threads")
    wanted = 1 if marker is None else (marker.args[0] if marker.args else MACHINE_TORCH_THREADS)
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Gradient, eigenpair, score and retrain caches in this test's own folder (``GIF_CACHE_DIR``); a module asks
    for it with ``pytestmark = pytest.mark.usefixtures("isolated_cache")``."""
    monkeypatch.setenv("GIF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def mlp_data():
    return tiny_mlp(), blobs()


@pytest.fixture
def conv_data():
    return tiny_convnet(), blobs(image=True)


def no_errors(at) -> None:
    """An AppTest page ran without an exception and shows no error message."""
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def plotly_specs(at) -> list[dict]:
    """The figures an AppTest page drew with ``st.plotly_chart``, as Plotly JSON (``data``, ``layout``)."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def finish_jobs(at):
    """Wait for an AppTest page's background jobs (:mod:`app.jobs`), then rerun it to draw their results: AppTest
    does not run the polling fragment on its timer."""
    from app.jobs import JOBS

    try:
        running = at.session_state[JOBS]
    except KeyError:
        return at
    for job in running.values():
        job.future.exception()  # waits; an error is drawn by the rerun
    return at.run()


def wait_for_background_work(at) -> None:
    """Let an AppTest session's background executors (:mod:`app.jobs`) finish what they run or hold, so that no
    preparation of a model the test loaded keeps computing into the next test of this process."""
    from app.jobs import EXECUTORS

    try:
        executors = at.session_state[EXECUTORS]
    except KeyError:
        return
    for executor in executors.values():
        executor.shutdown(wait=True)


@pytest.fixture(scope="session")
def shared_retrains(tmp_path_factory):
    """One folder of retrained models for the whole run, every xdist worker included (their temporary folders share
    a parent): retraining the bundled CNN without a class takes half a minute, and a dozen dashboard tests ask for
    the same ground truth. Entries are keyed by content and written atomically (gif_core.retrain), so sharing them
    changes no result; the tests of the retrain cache itself use folders of their own."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-retrains"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def default_question_retrained(shared_retrains, tmp_path_factory) -> None:
    """The What-if page's first question answered by retraining (the bundled default without class 0) in
    :func:`shared_retrains`, once per run: the dashboard tests that click it (AppTest and chromium, on any xdist
    worker) would otherwise retrain the CNN side by side when they run at the same time. The first worker to take
    the lock trains; the others wait and then read the entry (gif_core.retrain verifies it)."""
    from gif_core.requests import ClassRemoval
    from gif_core.retrain import retrain
    from gif_core.workspace import open_workspace_path
    from gif_core.zoo import default_model_path

    cache = Path(cache_folder(tmp_path_factory.mktemp("default-retrain"), shared_retrains))
    with (shared_retrains / ".default-question.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ws = open_workspace_path(default_model_path())
        retrain(ws.card, ws.bundle, ws.train, ClassRemoval(0), ws.model_id, cache_dir=cache, show_bar=False)


def cache_folder(root, shared_retrains) -> str:
    """A fresh cache root (``GIF_CACHE_DIR``) at ``root`` whose retrained models are :func:`shared_retrains`'."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "retrained").symlink_to(shared_retrains, target_is_directory=True)
    return str(root)


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory, shared_retrains):
    """Gradient, eigenpair and score caches in a fresh folder for the module that asks (``GIF_CACHE_DIR``); the
    retrained models are the run's shared ones (:func:`shared_retrains`)."""
    old = os.environ.get("GIF_CACHE_DIR")
    os.environ["GIF_CACHE_DIR"] = cache_folder(tmp_path_factory.mktemp("gif-cache"), shared_retrains)
    yield
    if old is None:
        os.environ.pop("GIF_CACHE_DIR")
    else:
        os.environ["GIF_CACHE_DIR"] = old


APP_ENTRY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app", "streamlit_app.py")
"""The dashboard's entry point: every AppTest opens a page through it, inside the frame the pages share."""


def open_page(path: str | None = None, timeout: float = 600):
    """A new AppTest session (not run yet) on the dashboard page ``path`` (its file relative to ``app/``, as in
    ``app.frame.PAGES``; None: the default page, Model & data), with the shared frame around it."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP_ENTRY, default_timeout=timeout)
    return at.switch_page(path) if path is not None else at
