"""GIF Explorer: Generalized Influence Functions as a library."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from gif_core.any_module import Objective, edit_module, retrain_module, tensor_bundle
from gif_core.browse import InfluenceBrowser
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import DataBundle, LabelledSet, load_data
from gif_core.ekfac import ekfac_inverse
from gif_core.experiment import EditConfig, EditReport, MethodOutcome, PreparedEdit, answer, prepare_edit, run_edit
from gif_core.influence import METHOD_LABELS, METHOD_SUMMARIES, METHODS, EstimatorConfig, InfluenceResult, estimate
from gif_core.layerwise import LayerwiseConfig, datainf_inverse, hyperinf_inverse
from gif_core.objective import training_loss
from gif_core.operators import HessianOperator
from gif_core.problem import EditProblem, HessianConfig, ProblemConfig, prepare
from gif_core.requests import (
    ClassRemoval,
    DataEdit,
    EditRequest,
    LabelChange,
    SampleRemoval,
    backdoor_relabel,
    parse_label_change,
    parse_sample_removal,
)
from gif_core.retrain import Retrained
from gif_core.scores import SCORE_FORMULA, influence_scores, self_influence, training_gradients
from gif_core.selection import Selection, SelectionConfig, select
from gif_core.solvers import SolverConfig, solve_least_squares, solve_symmetric
from gif_core.steps import StepSearchConfig
from gif_core.workspace import Workspace, open_workspace, open_workspace_path
from gif_core.zoo import bundled_model_path, default_model_path, list_bundled

try:  # the installed distribution's version, i.e. pyproject.toml's
    __version__ = _version("gif-explorer")
except _PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "METHOD_SUMMARIES",
    "SCORE_FORMULA",
    "ClassRemoval",
    "Curvature",
    "CurvatureConfig",
    "DataBundle",
    "DataEdit",
    "EditConfig",
    "EditProblem",
    "EditReport",
    "EditRequest",
    "EstimatorConfig",
    "HessianConfig",
    "HessianOperator",
    "InfluenceBrowser",
    "InfluenceResult",
    "LabelChange",
    "LabelledSet",
    "LayerwiseConfig",
    "MethodOutcome",
    "Objective",
    "PreparedEdit",
    "ProblemConfig",
    "Retrained",
    "SampleRemoval",
    "Selection",
    "SelectionConfig",
    "SolverConfig",
    "StepSearchConfig",
    "Workspace",
    "__version__",
    "answer",
    "backdoor_relabel",
    "bundled_model_path",
    "datainf_inverse",
    "default_model_path",
    "edit_module",
    "ekfac_inverse",
    "estimate",
    "hyperinf_inverse",
    "influence_scores",
    "list_bundled",
    "load_data",
    "open_workspace",
    "open_workspace_path",
    "parse_label_change",
    "parse_sample_removal",
    "prepare",
    "prepare_edit",
    "retrain_module",
    "run_edit",
    "select",
    "self_influence",
    "solve_least_squares",
    "solve_symmetric",
    "tensor_bundle",
    "training_gradients",
    "training_loss",
]
