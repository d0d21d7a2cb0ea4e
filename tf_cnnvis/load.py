"""Load: reduce any model source to one frozen ``GraphDef``.

Every later stage (rebuild, compute, render, write) sees only a
:class:`FrozenModel`, so there is exactly one code path after this module,
whatever the user handed in: a ``keras.Model``, a ``.keras``/``.h5`` file, a
TF2 SavedModel folder, a frozen ``.pb``, a TF1 checkpoint ``.meta``, a
``tf.Graph``, a ``GraphDef`` or a ``tf.compat.v1.Session``.

The user's objects are only read: graphs are copied before anything is
initialized, sessions are only asked for variable values, and nothing is
written to disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import weakref

import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format

from tf_cnnvis.errors import ModelLoadError, ModelNotFoundError, UntrustedModelError

logger = logging.getLogger("tf_cnnvis")

PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderWithDefault"})
VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp"})

# Ops that change state or belong to training/saving: never part of the
# forward graph we freeze, and neither is anything computed from them.
_STATEFUL_PREFIXES = ("Assign", "Apply", "ResourceApply", "SparseApply",
                      "ResourceSparseApply", "Scatter", "ResourceScatter")
_STATEFUL_OPS = frozenset({
    "NoOp", "SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore",
    "RestoreSlice", "MergeV2Checkpoints", "ShardedFilename",
    "VarIsInitializedOp", "IsVariableInitialized", "DestroyResourceOp",
})


@dataclasses.dataclass(frozen=True)
class FrozenModel:
    """A model reduced to constants: the single currency of the library.

    Attributes:
        graph_def: the frozen forward graph (no variables).
        inputs: placeholder tensor names (``"x:0"``), in the model's order.
        input_aliases: other names a user may use for an input (Keras input
            names, op names of the original graph) mapped to ``inputs``.
        keras_layers: Keras layer name (nested ones also as
            ``"outer/inner"``) mapped to the tensor name of its output.
        declared_shapes: input tensor name mapped to the shape the model
            declares, where the frozen graph leaves it open (a Keras model
            built for 64x64 images is frozen for any size).
        source: a short human description of where the model came from.
    """

    graph_def: tf.compat.v1.GraphDef
    inputs: tuple[str, ...]
    input_aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    keras_layers: dict[str, str] = dataclasses.field(default_factory=dict)
    declared_shapes: dict[str, tuple] = dataclasses.field(default_factory=dict)
    source: str = ""

    @property
    def fingerprint(self) -> str:
        """A digest of the graph and its weights (changes when weights do)."""
        return _fingerprint(self.graph_def)


_fingerprint_cache: dict[int, tuple[tf.compat.v1.GraphDef, str]] = {}


def _fingerprint(graph_def) -> str:
    cached = _fingerprint_cache.get(id(graph_def))
    if cached is not None and cached[0] is graph_def:
        return cached[1]
    digest = hashlib.sha1(graph_def.SerializeToString(deterministic=True)).hexdigest()
    _fingerprint_cache.clear()  # one entry is enough: the model of the current call
    _fingerprint_cache[id(graph_def)] = (graph_def, digest)
    return digest


ACCEPTED_SOURCES = (
    "a keras.Model, a tf.Graph, a tf.compat.v1.GraphDef, a tf.compat.v1.Session, "
    "or a path to a .keras file, an .h5 file, a SavedModel folder, a frozen .pb/.pbtxt "
    "GraphDef, or a TF1 checkpoint .meta file"
)


# Ops of a graph read from a file that would touch the file system or run
# Python when the graph runs; a downloaded model has no need for them.
UNTRUSTED_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "PyFunc", "PyFuncStateless",
    "EagerPyFunc", "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
    "MergeV2Checkpoints", "ShardedFilename", "WholeFileReader", "WholeFileReaderV2",
    "TextLineReader", "TextLineReaderV2", "TFRecordReader", "TFRecordReaderV2",
})


def load_model(source, *, trust_model_code: bool = False) -> FrozenModel:
    """Freeze ``source`` (see :data:`ACCEPTED_SOURCES`) into a FrozenModel.

    A model *file* that would run code (a Keras ``Lambda`` holding Python
    bytecode, or graph ops that read, write or call Python) is refused with
    an :class:`~tf_cnnvis.errors.UntrustedModelError` unless
    ``trust_model_code=True``. Objects built in the caller's own process
    are the caller's code and are not checked.
    """
    if isinstance(source, FrozenModel):
        return source
    if isinstance(source, (str, os.PathLike)):
        frozen = _load_path(os.fspath(source), trust_model_code)
        if not trust_model_code:
            _refuse_untrusted_ops(frozen.graph_def, os.fspath(source))
        return frozen
    if _is_keras_model(source):
        return freeze_keras_model(source)
    if isinstance(source, tf.compat.v1.Session):
        return _freeze_session(source)
    if isinstance(source, tf.Graph):
        return _freeze_graph(source)
    if isinstance(source, tf.compat.v1.GraphDef):
        return _freeze_graph_def(source, description="GraphDef")
    if hasattr(source, "signatures") and "serving_default" in getattr(source, "signatures", {}):
        return _freeze_concrete_function(source.signatures["serving_default"], "loaded SavedModel")
    raise ModelLoadError(
        f"cannot visualize a model given as {type(source).__name__!s} ({source!r:.80}); "
        f"expected {ACCEPTED_SOURCES}")


# --------------------------------------------------------------------------- paths

def _untrusted(path: str, what: str) -> UntrustedModelError:
    return UntrustedModelError(
        f"model file {path!r} holds {what}, which would run when the model is loaded or run; "
        "tf_cnnvis refuses such files by default. If you trust where the file came from, pass "
        "trust_model_code=True, or load it yourself (e.g. keras.saving.load_model(path, "
        "safe_mode=False)) and pass the model object")


def _refuse_untrusted_ops(graph_def, path: str):
    nodes = list(graph_def.node) + [node for function in graph_def.library.function
                                    for node in function.node_def]
    found = sorted({f"{node.name!r} ({node.op})" for node in nodes if node.op in UNTRUSTED_OPS})
    if found:
        raise _untrusted(path, "ops that touch files or call Python: " + ", ".join(found[:5])
                         + (f" and {len(found) - 5} more" if len(found) > 5 else ""))


def _is_code_refusal(error: Exception) -> bool:
    text = str(error)
    return "safe_mode" in text or "unsafe_deserialization" in text or "arbitrary code" in text


def _load_path(path: str, trust_model_code: bool = False) -> FrozenModel:
    if not os.path.exists(path):
        raise ModelNotFoundError(f"model path {path!r} does not exist; expected {ACCEPTED_SOURCES}")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(
                os.path.join(path, "saved_model.pbtxt")):
            return _load_saved_model(path)
        raise ModelLoadError(
            f"folder {path!r} is not a SavedModel (it has no saved_model.pb); expected {ACCEPTED_SOURCES}")
    lower = path.lower()
    if lower.endswith(".keras") or lower.endswith((".h5", ".hdf5")):
        return freeze_keras_model(_load_keras_file(path, trust_model_code))
    if lower.endswith(".meta"):
        return _load_meta_checkpoint(path)
    if lower.endswith((".pb", ".pbtxt", ".graphdef")):
        if os.path.basename(lower) in ("saved_model.pb", "saved_model.pbtxt"):
            return _load_saved_model(os.path.dirname(path) or ".")
        return _freeze_graph_def(_read_graph_def(path), description=f"frozen graph {path}")
    raise ModelLoadError(
        f"cannot tell what kind of model {path!r} is from its name; expected {ACCEPTED_SOURCES}")


def _read_graph_def(path: str) -> tf.compat.v1.GraphDef:
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        if path.lower().endswith(".pbtxt"):
            text_format.Merge(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (protobuf_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise ModelLoadError(
            f"{path!r} is not a readable GraphDef ({error}); expected a binary .pb or text .pbtxt "
            "written by tf.io.write_graph or a freezing tool") from error
    if not graph_def.node:
        raise ModelLoadError(f"{path!r} holds an empty GraphDef; expected a frozen TensorFlow graph")
    return graph_def


def _load_keras_file(path: str, trust_model_code: bool = False):
    import keras
    from keras.src.saving.serialization_lib import SafeModeScope

    if path.lower().endswith((".h5", ".hdf5")) and _written_by_keras2(path):
        # Keras 3 reads some Keras 2 configs without error but wrongly
        # (e.g. a Sequential's batch_input_shape); the legacy loader repairs them.
        from tf_cnnvis.models import load_legacy_h5

        try:
            # An explicit scope: Keras lets a process-wide
            # keras.config.enable_unsafe_deserialization() override safe_mode,
            # but only trust_model_code opts in here.
            with SafeModeScope(not trust_model_code):
                return load_legacy_h5(path)
        except ModelLoadError as error:
            if _is_code_refusal(error):
                raise _untrusted(path, "Python code (a Lambda layer)") from error
            raise
    try:
        with SafeModeScope(not trust_model_code):
            return keras.saving.load_model(path, compile=False, safe_mode=not trust_model_code)
    except Exception as error:  # noqa: BLE001 - Keras raises many types; we re-raise with context
        if _is_code_refusal(error):
            raise _untrusted(path, "Python code (a Lambda layer)") from error
        raise ModelLoadError(f"cannot load Keras file {path!r}: {error}") from error


def _written_by_keras2(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            version = h5.attrs.get("keras_version", b"")
    except OSError as error:
        raise ModelLoadError(f"{path!r} is not a readable HDF5 file: {error}") from error
    version = version.decode() if isinstance(version, bytes) else str(version)
    return version.split(".")[0] in ("1", "2")


def _load_saved_model(path: str) -> FrozenModel:
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"cannot load SavedModel folder {path!r}: {error}") from error
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ModelLoadError(
            f"SavedModel {path!r} has no 'serving_default' signature (it has "
            f"{sorted(signatures) or 'none'}); export it with a serving signature")
    return _freeze_concrete_function(signatures["serving_default"], f"SavedModel {path}")


def _load_meta_checkpoint(path: str) -> FrozenModel:
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf.compat.v1.train.import_meta_graph(path, clear_devices=True)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(f"cannot read meta graph {path!r}: {error}") from error
        with tf.compat.v1.Session(graph=graph) as session:
            if saver is not None:
                prefix = path[: -len(".meta")]
                try:
                    saver.restore(session, prefix)
                except Exception as error:  # noqa: BLE001
                    raise ModelLoadError(
                        f"cannot restore checkpoint {prefix!r} for {path!r}: {error}") from error
            return _freeze_session(session, description=f"checkpoint {path}")


# --------------------------------------------------------------------------- Keras

def _is_keras_model(obj) -> bool:
    try:
        import keras
    except ImportError:  # pragma: no cover - keras ships with tensorflow
        return False
    return isinstance(obj, keras.Model)


@dataclasses.dataclass
class _KerasFreeze:
    """A Keras model frozen once: which constant holds which variable's value."""

    layout: tuple
    frozen: FrozenModel
    variables: dict  # constant node name -> tf.Variable read into it


# Keras model -> its last freeze. Training changes only the weights, so a
# model visualized every epoch is traced and frozen once, and later calls
# only copy the current variable values into the frozen graph.
_keras_freezes: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _keras_layout(model) -> tuple:
    """What must stay the same for an earlier freeze to be reused."""
    return (tuple(id(layer) for layer in model.layers),
            tuple((id(weight), tuple(weight.shape)) for weight in model.weights))


def freeze_keras_model(model) -> FrozenModel:
    """Freeze a Keras model's inference graph, keeping its layer names.

    The spatial input size is left open when the model allows it, so any
    image size (and receptive-field crops) can be fed later. A model frozen
    before with the same layers and weights objects is not traced again:
    its current weight values are copied into the earlier frozen graph.
    """
    layout = _keras_layout(model)
    try:
        previous = _keras_freezes.get(model)
    except TypeError:  # not weak-referenceable: freeze every time
        previous = None
    if previous is not None and previous.layout == layout:
        return _with_current_values(previous)
    frozen, variables = _trace_keras_model(model)
    try:
        _keras_freezes[model] = _KerasFreeze(layout, frozen, variables)
    except TypeError:
        pass
    return frozen


def _with_current_values(previous: _KerasFreeze) -> FrozenModel:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.CopyFrom(previous.frozen.graph_def)
    for node in graph_def.node:
        variable = previous.variables.get(node.name)
        if variable is not None:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(variable.numpy()))
    return dataclasses.replace(previous.frozen, graph_def=graph_def)


def _trace_keras_model(model) -> tuple[FrozenModel, dict]:
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError) as error:
        raise ModelLoadError(
            f"Keras model {model.name!r} has no defined inputs; build it first (call it on data "
            "or give its first layer an input_shape)") from error
    input_names = [_keras_input_name(tensor, index) for index, tensor in enumerate(inputs)]

    def call(*tensors):
        return model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)

    function = tf.function(call)
    concrete = None
    errors = []
    for open_spatial in (True, False):
        specs = [tf.TensorSpec(_spec_shape(tensor.shape, open_spatial), tensor.dtype or tf.float32,
                               name=name) for tensor, name in zip(inputs, input_names)]
        try:
            concrete = function.get_concrete_function(*specs)
            break
        except Exception as error:  # noqa: BLE001 - a fixed-size model fails to trace open shapes
            errors.append(error)
    if concrete is None:
        raise ModelLoadError(f"cannot trace Keras model {model.name!r}: {errors[-1]}")
    frozen = _freeze_concrete_function(concrete, f"Keras model {model.name!r}")
    aliases = dict(frozen.input_aliases)
    for name, tensor_name in zip(input_names, frozen.inputs):
        aliases[name] = tensor_name
    layers = _map_keras_layers(model, frozen.graph_def)
    declared = {name: tuple(tensor.shape) for name, tensor in zip(frozen.inputs, inputs)}
    frozen = dataclasses.replace(frozen, input_aliases=aliases, keras_layers=layers,
                                 declared_shapes=declared)
    return frozen, _captured_variables(concrete, frozen.graph_def)


def _captured_variables(concrete, graph_def) -> dict:
    """Constant node name -> the variable whose value freezing put there.

    Freezing turns each captured variable handle (a placeholder of the
    traced graph) into a constant of the same name.
    """
    by_handle = {id(variable.handle): variable for variable in concrete.graph.variables}
    constants = {node.name for node in graph_def.node if node.op == "Const"}
    variables = {}
    for external, internal in concrete.graph.captures:
        variable = by_handle.get(id(external))
        if variable is not None and internal.op.name in constants:
            variables[internal.op.name] = variable
    return variables


def _keras_input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0])
    if not re.match(r"[A-Za-z]", name):
        name = f"input_{name}"
    return name


def _spec_shape(shape, open_spatial: bool):
    dims = list(shape)
    dims[0] = None
    if open_spatial and len(dims) == 4:
        dims[1] = dims[2] = None
    return dims


def _map_keras_layers(model, graph_def) -> dict[str, str]:
    """Find each Keras layer's output op by its name scope in the frozen graph.

    Keras opens a name scope per layer call (``model_1/conv_1/...``); the
    layer's output is the last op of that scope whose value leaves it.
    """
    nodes = [node for node in graph_def.node]
    consumers: dict[str, set[str]] = {}
    for node in nodes:
        for inp in node.input:
            source = inp.lstrip("^").split(":")[0]
            consumers.setdefault(source, set()).add(node.name)
    identity_outputs = {node.input[0].split(":")[0] for node in nodes
                        if node.op == "Identity" and node.name.startswith("Identity") and node.input}

    def matches(component: str, name: str) -> bool:
        return re.fullmatch(re.escape(name) + r"(_\d+)?", component) is not None

    table: dict[str, str] = {}

    def visit(container, scope: list[str], prefix: str):
        for layer in getattr(container, "layers", []):
            if type(layer).__name__ == "InputLayer":
                continue
            path = scope + [layer.name]
            depth = len(path)
            members = [n for n in nodes
                       if len(parts := n.name.split("/")) > depth
                       and all(matches(parts[i], path[i]) for i in range(depth))]
            member_names = {n.name for n in members}
            leaving = [n for n in members if n.op != "Const" and (
                n.name in identity_outputs or consumers.get(n.name, set()) - member_names)]
            if leaving:
                table.setdefault(prefix + layer.name, f"{leaving[-1].name}:0")
            if hasattr(layer, "layers"):
                visit(layer, path, prefix + layer.name + "/")

    top_scope_names = {n.name.split("/")[0] for n in nodes if "/" in n.name}
    root = [s for s in top_scope_names if matches(s, model.name)]
    visit(model, [model.name] if root else [], "")
    return table


# --------------------------------------------------------------------------- TF1 / TF2 graphs

def _freeze_concrete_function(concrete, description: str) -> FrozenModel:
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:
        frozen = convert_variables_to_constants_v2(concrete)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"cannot freeze {description}: {error}") from error
    graph_def = frozen.graph.as_graph_def()
    inputs = tuple(t.name for t in frozen.inputs if t.dtype != tf.resource)
    aliases = {}
    for tensor_name in inputs:
        aliases[tensor_name.split(":")[0]] = tensor_name
    try:
        structured = concrete.structured_input_signature[1]
        for key, spec in structured.items():
            aliases.setdefault(key, f"{spec.name or key}:0")
    except (AttributeError, IndexError, TypeError):
        pass
    return FrozenModel(graph_def=graph_def, inputs=inputs, input_aliases=aliases, source=description)


def _forward_node_names(graph_def) -> list[str]:
    """Names of the nodes that make up the forward (inference) graph."""
    excluded: set[str] = set()
    for node in graph_def.node:
        parts = node.name.split("/")
        if (node.op in _STATEFUL_OPS or node.op.startswith(_STATEFUL_PREFIXES)
                or "gradients" in parts[:-1] or parts[0] in ("save", "saver")):
            excluded.add(node.name)
    changed = True
    while changed:  # anything computed from an excluded node is excluded too
        changed = False
        for node in graph_def.node:
            if node.name not in excluded and any(
                    inp.lstrip("^").split(":")[0] in excluded for inp in node.input):
                excluded.add(node.name)
                changed = True
    return [node.name for node in graph_def.node if node.name not in excluded]


def _placeholders(graph_def) -> tuple[str, ...]:
    return tuple(f"{node.name}:0" for node in graph_def.node if node.op in PLACEHOLDER_OPS)


def _freeze_session(session, description: str = "session") -> FrozenModel:
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_from_session_graph,
    )

    graph_def = session.graph.as_graph_def()
    names = _forward_node_names(graph_def)
    if not any(node.op in VARIABLE_OPS for node in graph_def.node):
        return _freeze_graph_def(graph_def, description)
    try:
        frozen = convert_variables_to_constants_from_session_graph(session, graph_def, names)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot read the variables of {description}: {error}; make sure the session has "
            "initialized or restored them") from error
    return _freeze_graph_def(frozen, description)


def _freeze_graph(graph: tf.Graph) -> FrozenModel:
    graph_def = graph.as_graph_def()
    if not any(node.op in VARIABLE_OPS for node in graph_def.node):
        return _freeze_graph_def(graph_def, "tf.Graph")
    variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    if not variables:
        raise ModelLoadError(
            "the tf.Graph holds variables but no record of how to initialize them; pass the "
            "tf.compat.v1.Session that holds their values instead of the graph")
    logger.warning("the graph was given without a session: its %d variables get their initial "
                   "(untrained) values; pass the session to see trained weights", len(variables))
    # Initialize a private copy: the user's graph is never touched.
    copy = tf.Graph()
    with copy.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=copy) as session:
        session.run([v.initializer.name for v in variables])
        return _freeze_session(session, description="tf.Graph")


def _freeze_graph_def(graph_def, description: str) -> FrozenModel:
    if any(node.op in VARIABLE_OPS for node in graph_def.node):
        raise ModelLoadError(
            f"{description} still holds variables; freeze it first, or pass the tf.Graph or "
            "tf.compat.v1.Session that owns them")
    names = set(_forward_node_names(graph_def))
    pruned = tf.compat.v1.GraphDef()
    pruned.versions.CopyFrom(graph_def.versions)
    pruned.library.CopyFrom(graph_def.library)
    pruned.node.extend(node for node in graph_def.node if node.name in names)
    for node in pruned.node:  # devices of the original machine are irrelevant here
        node.device = ""
        del node.input[:]  # rebuilt below without control edges to removed nodes
    originals = {node.name: node for node in graph_def.node}
    for node in pruned.node:
        node.input.extend(inp for inp in originals[node.name].input
                          if inp.lstrip("^").split(":")[0] in names)
    inputs = _placeholders(pruned)
    if not inputs:
        raise ModelLoadError(f"{description} has no placeholder to feed an image into")
    aliases = {name.split(":")[0]: name for name in inputs}
    return FrozenModel(graph_def=pruned, inputs=inputs, input_aliases=aliases, source=description)
