"""Exported programs (``torch.export.save``, ``.pt2``) loaded without running anything the file brings.

A ``.pt2`` lets a user bring an architecture we do not know: its graph of ATen operators and its weights travel in
the file, and no Python code of theirs is imported. But ``torch.export.load`` itself is not safe on an untrusted file
(its docstring says so): a weight or constant stored "pickled" is read with ``torch.load(weights_only=False)``, the
sample inputs fall back to it when the weights-only reader fails, custom objects go through ``pickle.loads``,
symbolic shapes are parsed by ``sympy.sympify`` (which evaluates Python), guard code is compiled into a function,
and AOTInductor entries are shared libraries it loads. So the archive is checked entry by entry BEFORE torch reads
it (:func:`check_archive`), and only a file that uses none of those paths is handed to ``torch.export.load``:

* every entry lies under one root folder and is one of the names an exported program's archive holds (version and
  format files, ``models/model.json``, raw weight and tensor-constant records, their JSON configs, the sample
  inputs, ``extra/`` text files); no AOTInductor, ExecuTorch, custom-object or legacy ``.pt`` entry; no duplicate
  names; every entry stored uncompressed (so the file's length bounds what it expands to);
* the weight and constant configs mark no payload as pickled, and each record holds exactly the bytes its declared
  shape and dtype need (a record of zero bytes declaring a large shape would otherwise be allocated as zeros);
* the sample inputs (if any) are readable by ``torch.load(weights_only=True)``, so torch never falls back;
* ``models/model.json`` calls only ATen operators (``torch.ops.aten.*``, minus the few with effects outside their
  tensors: reading files, printing, re-pointing storage) and ``operator.getitem``; it has no nested graphs (higher-
  order operators), no custom objects, no guard code, and every symbolic expression is a bare size symbol
  (``Symbol('s0', positive=True, integer=True)``) or integer arithmetic on such symbols.

After loading, the graph is checked again on the objects torch built (:func:`check_program`), and it is rebuilt as
an ordinary ``torch.fx.GraphModule`` (:func:`as_layered_module`) in which every ``aten.linear`` / ``aten.conv2d`` /
``aten.batch_norm`` call on the program's own parameters becomes a call of a real ``nn.Linear`` / ``nn.Conv2d`` /
``nn.BatchNorm{1,2}d`` holding the same tensors under the same names. That makes an exported model a model like any
other here: the neuron selectors' hooks see its layers, ``train()``/``eval()`` work (an exported program's own
module refuses both), BatchNorm uses batch statistics in training and running statistics in eval, and
:func:`reinitialised` can draw fresh weights for the retrained ground truth with PyTorch's own ``reset_parameters``.
The rebuilt module must reproduce the program's outputs on a probe batch, or it is refused. Export the model in
eval mode (dropout is then absent from the graph, in training as well) with a dynamic batch dimension:
``torch.export.export(model.eval(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})``.
"""

from __future__ import annotations

import copy
import io
import json
import operator
import re
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import torch
from torch import fx, nn

EXPORTED_ARCH = "exported"
"""The model card's ``arch`` of a model whose graph is its ``.pt2`` file."""
MODEL_NAME = "model"
"""The program ``torch.export.save`` stores (and ``torch.export.load`` returns)."""

_FIXED_ENTRIES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        f"models/{MODEL_NAME}.json",
        f"data/sample_inputs/{MODEL_NAME}.pt",
        f"data/weights/{MODEL_NAME}_weights_config.json",
        f"data/constants/{MODEL_NAME}_constants_config.json",
    }
)
_RECORD_ENTRY = re.compile(r"^data/(weights/weight|constants/tensor)_\d+$")
_EXTRA_ENTRY = re.compile(r"^extra/[A-Za-z0-9_.-]+$")
_ATEN_TARGET = re.compile(r"^torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
_GETITEM_TARGET = "_operator.getitem"
FORBIDDEN_ATEN_OPS = frozenset(
    {"from_file", "_print", "set_", "set_data", "record_stream", "_cufft_set_plan_cache_max_size"}
)
"""ATen operators with effects outside their tensors (reading a file, printing, re-pointing a tensor's storage,
changing a process-wide cache): refused in a loaded graph."""
_SYMBOL = r"[su]\d+"
_SAFE_EXPRESSION = re.compile(rf"^(Symbol\('{_SYMBOL}', positive=True, integer=True\)|[0-9su+\-*() ]+)$")
"""What ``sympy.sympify`` may be given: a size symbol as torch writes it, or integer arithmetic of symbols whose
only letters are ``s`` and ``u`` (no Python name, hence no call, can be spelled with those)."""
_DTYPE_BYTES = {
    # torch._export.serde.schema.ScalarType codes of the floating and integer types a classifier's weights use
    1: 1,  # BYTE
    2: 1,  # CHAR
    3: 2,  # SHORT
    4: 4,  # INT
    5: 8,  # LONG
    6: 2,  # HALF
    7: 4,  # FLOAT
    8: 8,  # DOUBLE
    12: 1,  # BOOL
    13: 2,  # BFLOAT16
}
_PROBE_ROWS = 3


def _refuse(filename: str, why: str) -> ValueError:
    return ValueError(
        f"refused to load {filename!r}: {why}. Only an exported program of ATen operators with plain tensor weights "
        "is loaded: export the model in eval mode with torch.export.export(model.eval(), (x,), dynamic_shapes="
        '{"x": {0: torch.export.Dim("batch")}}) and save it with torch.export.save(program, path)'
    )


def check_archive(content: bytes, filename: str) -> None:
    """ValueError unless ``content`` is a ``.pt2`` archive that ``torch.export.load`` reads without unpickling,
    evaluating or loading code (see the module docstring for every check)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as error:
        raise _refuse(filename, "it is not the zip archive torch.export.save writes") from error
    with archive:
        entries = {_relative_name(info.filename, filename): info for info in _infos(archive, filename)}
        for name in entries:
            if name not in _FIXED_ENTRIES and not _RECORD_ENTRY.match(name) and not _EXTRA_ENTRY.match(name):
                raise _refuse(filename, f"it holds the entry {name!r}, which is not part of an exported program")
        for required in (
            "archive_version",
            f"models/{MODEL_NAME}.json",
            f"data/weights/{MODEL_NAME}_weights_config.json",
        ):
            if required not in entries:
                raise _refuse(filename, f"it has no {required!r} entry (is it a torch.export.save file?)")

        def read(name: str) -> bytes:
            return archive.read(entries[name])

        for directory in ("weights", "constants"):
            config_name = f"data/{directory}/{MODEL_NAME}_{directory}_config.json"
            if config_name in entries:
                _check_payload_config(_json(read(config_name), config_name, filename), directory, entries, filename)
        inputs_name = f"data/sample_inputs/{MODEL_NAME}.pt"
        if inputs_name in entries and entries[inputs_name].file_size:
            try:
                torch.load(io.BytesIO(read(inputs_name)), weights_only=True, map_location="cpu")
            except Exception as error:  # any failure of the weights-only reader: torch would retry with pickle
                raise _refuse(filename, "its sample inputs are not plain tensors") from error
        _check_program_json(_json(read(f"models/{MODEL_NAME}.json"), "models/model.json", filename), filename)


def _infos(archive: zipfile.ZipFile, filename: str) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise _refuse(filename, "it names an entry twice (two readers could then disagree on its content)")
    compressed = [info.filename for info in infos if info.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise _refuse(filename, f"its entry {compressed[0]!r} is compressed (torch.export.save stores entries as is)")
    roots = {PurePosixPath(name).parts[0] if "/" in name else "" for name in names}
    if len(roots) != 1 or "" in roots:
        raise _refuse(filename, "its entries do not all lie under one root folder")
    return infos


def _relative_name(name: str, filename: str) -> str:
    parts = PurePosixPath(name).parts
    if any(part in ("..", ".") for part in parts) or name.startswith("/"):
        raise _refuse(filename, f"its entry {name!r} leaves the archive's folder")
    return "/".join(parts[1:])


def _json(content: bytes, name: str, filename: str) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError) as error:
        raise _refuse(filename, f"its {name!r} is not JSON") from error


def _check_payload_config(config: Any, directory: str, entries: dict[str, zipfile.ZipInfo], filename: str) -> None:
    """Every payload of a weights/constants config is a raw tensor record of exactly its declared size."""
    payloads = config.get("config") if isinstance(config, dict) else None
    if not isinstance(payloads, dict):
        raise _refuse(filename, f"its {directory} config is malformed")
    for fqn, payload in payloads.items():
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
            raise _refuse(filename, f"its {directory[:-1]} {fqn!r} is stored pickled (reading it would run pickle)")
        path_name = payload.get("path_name")
        record = f"data/{directory}/{path_name}"
        if not isinstance(path_name, str) or not _RECORD_ENTRY.match(record) or record not in entries:
            raise _refuse(filename, f"its {directory[:-1]} {fqn!r} points at {path_name!r}, not a tensor record")
        meta: Any = payload.get("tensor_meta")
        try:
            sizes = [int(size["as_int"]) for size in meta["sizes"]]
            element = _DTYPE_BYTES[int(meta["dtype"])]
        except (KeyError, TypeError, ValueError) as error:
            raise _refuse(filename, f"its {directory[:-1]} {fqn!r} has no concrete shape and known dtype") from error
        numel = 1
        for size in sizes:
            numel *= size
        if min(sizes, default=0) < 0 or (numel * element > entries[record].file_size):
            raise _refuse(
                filename,
                f"its {directory[:-1]} {fqn!r} declares shape {sizes} but its record holds "
                f"{entries[record].file_size:,} bytes",
            )


def _check_program_json(program: Any, filename: str) -> None:
    """The serialised program calls ATen operators only and holds nothing torch would evaluate."""
    if not isinstance(program, dict):
        raise _refuse(filename, "its models/model.json is not an exported program")
    if program.get("guards_code"):
        raise _refuse(filename, "it carries guard code (torch compiles it into a function)")
    for key in program.get("range_constraints") or {}:
        if not re.fullmatch(_SYMBOL, str(key)):
            raise _refuse(filename, f"its range constraint {str(key)[:80]!r} is not a size symbol")
    graph = (program.get("graph_module") or {}).get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise _refuse(filename, "its models/model.json has no graph")
    if graph.get("custom_obj_values"):
        raise _refuse(filename, "its graph holds custom objects (they are unpickled)")
    for node in graph["nodes"]:
        target = node.get("target") if isinstance(node, dict) else None
        match = _ATEN_TARGET.match(target) if isinstance(target, str) else None
        if target != _GETITEM_TARGET and (match is None or match.group(1) in FORBIDDEN_ATEN_OPS):
            raise _refuse(filename, f"its graph calls {str(target)[:80]!r}, which is not an allowed ATen operator")
    for key, value in _walk(program):
        if key == "as_graph":
            raise _refuse(filename, "its graph nests graphs (higher-order operators are not loaded)")
        if key == "expr_str" and not (isinstance(value, str) and _SAFE_EXPRESSION.match(value)):
            raise _refuse(filename, f"its symbolic expression {str(value)[:80]!r} is not a plain size expression")


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of the nested dicts and lists of ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                yield key, inner
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def check_program(program: torch.export.ExportedProgram, filename: str) -> None:
    """ValueError unless the loaded ``program`` calls allowed ATen operators only, mutates nothing and maps one
    tensor input to one tensor output."""
    for node in program.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        target = node.target
        allowed = target is operator.getitem or (
            isinstance(target, torch._ops.OpOverload)
            and target.namespace == "aten"
            and target._schema.name.split("::")[-1] not in FORBIDDEN_ATEN_OPS
        )
        if node.op != "call_function" or not allowed:
            raise _refuse(filename, f"its graph has a {node.op} of {target!r}")
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise _refuse(filename, "its graph updates buffers or inputs (it was exported in training mode)")
    if len(signature.user_inputs) != 1 or len(signature.user_outputs) != 1:
        raise _refuse(
            filename,
            f"it takes {len(signature.user_inputs)} inputs and returns {len(signature.user_outputs)} outputs; a "
            "classifier takes one batch of inputs and returns one tensor of logits",
        )


def load_exported(content: bytes, filename: str, input_shape: tuple[int, ...]) -> nn.Module:
    """The classifier in the ``.pt2`` bytes ``content``, checked (:func:`check_archive`, :func:`check_program`)
    and rebuilt with real layer modules (:func:`as_layered_module`), on the CPU in eval mode. Its outputs must
    equal the program's on a probe batch of ``input_shape`` inputs whose size differs from the exported one."""
    check_archive(content, filename)
    try:
        program = torch.export.load(io.BytesIO(content))
    except Exception as error:  # a malformed program: torch's own message says what
        raise ValueError(f"torch.export.load could not read {filename!r}: {error}") from error
    check_program(program, filename)
    original = program.module()
    layered = as_layered_module(original)
    probe = torch.rand((_PROBE_ROWS, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected, obtained = original(probe), layered.eval()(probe)
    except Exception as error:  # a shape guard or a fixed batch size in the graph
        raise ValueError(
            f"the exported program in {filename!r} does not run on a batch of {_PROBE_ROWS} inputs of shape "
            f"{list(input_shape)} ({str(error).strip().splitlines()[0] if str(error).strip() else error!r}). Check "
            "the card's input_shape, and export with a dynamic batch dimension: dynamic_shapes="
            '{"x": {0: torch.export.Dim("batch")}}'
        ) from error
    if not isinstance(obtained, torch.Tensor) or obtained.shape != expected.shape:
        raise ValueError(f"the exported program in {filename!r} does not return one tensor of logits")
    if not torch.allclose(obtained, expected, rtol=1e-5, atol=1e-6):
        raise ValueError(f"rebuilding the exported program in {filename!r} with layer modules changed its outputs")
    return layered


_LAYER_OPS = {
    torch.ops.aten.linear.default: "linear",
    torch.ops.aten.conv2d.default: "conv2d",
    torch.ops.aten.batch_norm.default: "batch_norm",
}


def as_layered_module(program_module: nn.Module) -> fx.GraphModule:
    """``program_module`` (an exported program's ``module()``) as an ordinary GraphModule with one tensor input,
    in which each linear / conv2d / eval-mode batch_norm call whose weights are the module's own parameters is a
    call of an ``nn.Linear`` / ``nn.Conv2d`` / ``nn.BatchNorm{1,2}d`` at the parameters' own path (so names and
    tensors are unchanged). The program's input guards and pytree packing are dropped: the rebuilt module takes
    the image batch and returns the logits."""
    assert isinstance(program_module, fx.GraphModule)
    source = program_module.graph
    root = nn.Module()
    graph = fx.Graph()
    values: dict[fx.Node, fx.Node] = {}
    layers = {
        node for node in source.nodes
        if node.op == "call_function" and node.target in _LAYER_OPS and _owned_layer(program_module, node)
    }  # fmt: skip
    for node in source.nodes:
        if node.op == "get_attr" and all(user in layers for user in node.users):
            continue  # a replaced layer's own tensor (or an unused one): the layer module holds it
        if node.op == "placeholder":
            values[node] = graph.placeholder("x")
        elif node.op == "call_module":  # the program's input guards
            continue
        elif node.op == "output":
            (result,) = fx.node.map_arg(node.args[0], lambda n: values[n])
            graph.output(result)
        elif node in layers:
            path, layer = _layer_module(program_module, node)
            _set_submodule(root, path, layer)
            values[node] = graph.call_module(path, (values[node.args[0]],))  # type: ignore[index]
        else:
            if node.op == "get_attr":
                _copy_attribute(program_module, root, str(node.target))
            values[node] = graph.node_copy(node, lambda n: values[n])
    layered = fx.GraphModule(root, graph, class_name="ExportedClassifier")
    return layered.eval()


def _owned_layer(module: nn.Module, node: fx.Node) -> bool:
    """Whether ``node``'s tensors are get_attr's of ``<path>.weight`` / ``<path>.bias`` (and, for batch_norm,
    ``<path>.running_mean`` / ``<path>.running_var``, in eval mode) of a single submodule path."""
    args = list(node.args)
    kind = _LAYER_OPS[node.target]  # type: ignore[index]
    names = ("weight", "bias", "running_mean", "running_var") if kind == "batch_norm" else ("weight", "bias")
    tensors = args[1 : 1 + len(names)]
    if kind == "batch_norm" and (len(args) < 6 or args[5] is not False):
        return False
    if not tensors or not isinstance(tensors[0], fx.Node) or tensors[0].op != "get_attr":
        return False
    path = str(tensors[0].target).rpartition(".")[0]
    for name, tensor in zip(names, tensors, strict=False):
        if tensor is None and name == "bias":
            continue
        if not (isinstance(tensor, fx.Node) and tensor.op == "get_attr" and tensor.target == f"{path}.{name}"):
            return False
    return bool(path)


def _layer_module(module: nn.Module, node: fx.Node) -> tuple[str, nn.Module]:
    """The layer module that computes ``node`` with the program's own tensors, and its path."""
    kind = _LAYER_OPS[node.target]  # type: ignore[index]
    path = str(node.args[1].target).rpartition(".")[0]  # type: ignore[union-attr]
    holder = module.get_submodule(path)
    shape = tuple(int(size) for size in holder.get_parameter("weight").shape)
    has_bias = len(node.args) > 2 and node.args[2] is not None
    layer: nn.Module
    with torch.device("meta"):
        if kind == "linear":
            layer = nn.Linear(shape[1], shape[0], bias=has_bias)
        elif kind == "conv2d":
            stride, padding, dilation, groups = (list(node.args[3:7]) + [1, 0, 1, 1][len(node.args[3:7]) :])[:4]
            layer = nn.Conv2d(
                shape[1] * int(groups), shape[0], shape[2:], stride=stride,  # type: ignore[arg-type]
                padding=padding, dilation=dilation, groups=int(groups), bias=has_bias,  # type: ignore[arg-type]
            )  # fmt: skip
        else:
            momentum, eps = float(node.args[6]), float(node.args[7])  # type: ignore[arg-type]
            rank = node.args[0].meta["val"].ndim  # type: ignore[union-attr]
            norm = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
            layer = norm(shape[0], eps=eps, momentum=momentum, affine=True)
    for name, parameter in list(holder.named_parameters(recurse=False)):
        layer.register_parameter(name, parameter)
    for name, value in list(holder.named_buffers(recurse=False)):
        layer.register_buffer(name, value)
    return path, layer


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent = root
    *parents, last = path.split(".")
    for name in parents:
        if not hasattr(parent, name):
            parent.add_module(name, nn.Module())
        parent = getattr(parent, name)
    parent.add_module(last, module)


def _copy_attribute(source: nn.Module, root: nn.Module, target: str) -> None:
    """Put ``source``'s parameter/buffer/tensor at ``target`` under ``root`` (unless a layer already holds it)."""
    path, _, name = target.rpartition(".")
    owner = source.get_submodule(path) if path else source
    value = getattr(owner, name)
    if path and not _has_path(root, path):
        _set_submodule(root, path, nn.Module())
    holder = root.get_submodule(path) if path else root
    if hasattr(holder, name):
        return
    if isinstance(value, nn.Parameter):
        holder.register_parameter(name, value)
    elif name in owner._buffers:
        holder.register_buffer(name, value, persistent=name not in owner._non_persistent_buffers_set)
    else:
        setattr(holder, name, value)


def _has_path(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


RESETTABLE_LAYERS = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention
)  # fmt: skip


def reinitialised(module: nn.Module, seed: int) -> nn.Module:
    """A copy of ``module`` with fresh weights: each Linear/Conv/BatchNorm/LayerNorm/Embedding's own
    ``reset_parameters`` and each MultiheadAttention's ``_reset_parameters`` after its ``out_proj``'s, as at
    construction (PyTorch's default initialisation; BatchNorm's running statistics reset too), drawn from
    ``torch.manual_seed(seed)`` without touching the caller's random state. ValueError when a trainable parameter
    lies outside such a layer: there is then no stated way to initialise it, so no honest retrained ground truth."""
    fresh = copy.deepcopy(module)
    covered: set[str] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        handled: set[int] = set()
        for path, layer in fresh.named_modules():  # construction order: a parent's draws before its children's
            if id(layer) in handled or not isinstance(layer, RESETTABLE_LAYERS):
                continue
            if isinstance(layer, nn.MultiheadAttention):  # it builds out_proj, then runs _reset_parameters
                layer.out_proj.reset_parameters()
                layer._reset_parameters()
                handled.add(id(layer.out_proj))
            else:
                layer.reset_parameters()
            covered.update(f"{path}.{name}" if path else name for name, _ in layer.named_parameters())
    loose = [name for name, parameter in fresh.named_parameters() if parameter.requires_grad and name not in covered]
    if loose:
        raise ValueError(
            f"the model's parameters {', '.join(loose[:8])} lie outside any layer with a stated initialisation "
            f"({', '.join(layer.__name__ for layer in RESETTABLE_LAYERS)}), so it "
            "cannot be re-initialised for the retrained ground truth; compare against IF instead of retraining"
        )
    return fresh


def export_bytes(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``module`` (in eval mode) exported with a dynamic batch dimension and saved as ``.pt2`` bytes, e.g. an edited
    exported model. The bytes are checked by loading them back with :func:`load_exported`: what is written is
    what a later load accepts, with the same outputs."""
    module = copy.deepcopy(module).eval()
    example = torch.zeros((2, *input_shape))
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    content = buffer.getvalue()
    reloaded = load_exported(content, "edited.pt2", input_shape)
    probe = torch.rand((_PROBE_ROWS, *input_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if not torch.allclose(reloaded(probe), module(probe), rtol=1e-5, atol=1e-6):
            raise ValueError("the exported model does not reproduce the edited model's outputs; nothing is saved")
    return content
