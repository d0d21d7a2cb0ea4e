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
import io
import logging
import os
import re
import weakref

import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format

from tf_cnnvis.errors import ModelLoadError, ModelNotFoundError, UntrustedModelError
from tf_cnnvis.inlining import inline_function_calls

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
        graph_def, sizes = _read_graph_def(path)
        return _freeze_graph_def(graph_def, description=f"frozen graph {path}", content_sizes=sizes)
    raise ModelLoadError(
        f"cannot tell what kind of model {path!r} is from its name; expected {ACCEPTED_SOURCES}")


def _read_graph_def(path: str) -> tuple[tf.compat.v1.GraphDef, list | None]:
    """The GraphDef in ``path``, and (binary files) its constants' content sizes (see _content_sizes)."""
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as stream:
        data = stream.read()
    sizes = None
    try:
        if path.lower().endswith(".pbtxt"):
            text_format.Merge(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
            sizes = _content_sizes(data, len(graph_def.node))
    except (protobuf_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise ModelLoadError(
            f"{path!r} is not a readable GraphDef ({error}); expected a binary .pb or text .pbtxt "
            "written by tf.io.write_graph or a freezing tool") from error
    if not graph_def.node:
        raise ModelLoadError(f"{path!r} holds an empty GraphDef; expected a frozen TensorFlow graph")
    return graph_def, sizes


def _load_keras_file(path: str, trust_model_code: bool = False):
    import keras
    from keras.src.saving.serialization_lib import SafeModeScope

    if path.lower().endswith((".h5", ".hdf5")):
        legacy = _check_keras_h5(path)
    else:
        legacy = False
        _check_keras_archive(path)
    if legacy:
        # Keras 3 reads some Keras 2 configs without error but wrongly
        # (e.g. a Sequential's batch_input_shape); the legacy loader repairs them.
        from tf_cnnvis.legacy_h5 import load_legacy_h5

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


def _check_keras_h5(path: str) -> bool:
    """Refuse a damaged .h5 before Keras reads it; return whether Keras 1 or 2 wrote it."""
    import h5py

    size = os.path.getsize(path)
    with _Mapped(path) as data:
        _check_hdf5_heaps(data, 0, size, repr(path))
    try:
        with h5py.File(path, "r") as h5:
            version = h5.attrs.get("keras_version", b"")
            _check_hdf5_datasets(h5, size, repr(path))
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError... on damage
        raise ModelLoadError(f"{path!r} is not a readable HDF5 file: {error}") from error
    version = version.decode(errors="replace") if isinstance(version, bytes) else str(version)
    return version.split(".")[0] in ("1", "2")


def _check_keras_archive(path: str):
    """Refuse a .keras archive whose weights file would hang HDF5 or declares absurd sizes."""
    import zipfile

    import h5py

    try:
        with zipfile.ZipFile(path) as archive, _Mapped(path) as data:
            for info in archive.infolist():
                if not info.filename.endswith(".h5"):
                    continue
                where = f"{path!r} ({info.filename})"
                if info.compress_type == zipfile.ZIP_STORED:  # as Keras writes: scan it in place
                    local = data[info.header_offset:info.header_offset + 30]
                    if len(local) < 30 or local[:4] != b"PK\x03\x04":
                        raise ModelLoadError(f"{where} has no local header where the archive says")
                    start = (info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                             + int.from_bytes(local[28:30], "little"))
                    end = min(start + info.compress_size, len(data))
                    _check_hdf5_heaps(data, start, end, where)
                    weights = _Window(data, start, end)
                else:
                    content = archive.read(info)
                    _check_hdf5_heaps(content, 0, len(content), where)
                    weights = io.BytesIO(content)
                with h5py.File(weights, "r") as h5:
                    _check_hdf5_datasets(h5, info.file_size, where)
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - zipfile raises BadZipFile, OSError, ValueError...
        raise ModelLoadError(f"{path!r} is not a readable .keras archive: {error}; expected a file "
                             "written by model.save('....keras')") from error


class _Mapped:
    """``with _Mapped(path) as data``: the file's bytes, memory-mapped (empty bytes for an empty file)."""

    def __init__(self, path: str):
        self.path = path
        self.stream = self.map = None

    def __enter__(self):
        import mmap

        self.stream = open(self.path, "rb")
        if os.fstat(self.stream.fileno()).st_size == 0:
            return b""
        self.map = mmap.mmap(self.stream.fileno(), 0, access=mmap.ACCESS_READ)
        return self.map

    def __exit__(self, *exc):
        if self.map is not None:
            self.map.close()
        self.stream.close()


class _Window(io.RawIOBase):
    """A read-only file over ``data[start:end]``: a member stored in a zip archive, for h5py."""

    def __init__(self, data, start: int, end: int):
        super().__init__()
        self.data, self.start, self.end, self.position = data, start, end, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.position

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.end - self.start}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer):
        begin = self.start + self.position
        count = max(0, min(len(buffer), self.end - begin))
        memoryview(buffer).cast("B")[:count] = self.data[begin:begin + count]
        self.position += count
        return count


# HDF5 (1.14) decodes a global heap collection (where variable-length strings
# such as a model's JSON config live) in a loop that never ends when an
# object's size is zero, and runs off the collection on a size that is too
# large: a damaged .h5 would hang the process inside the library, beyond the
# reach of any exception. Such collections are found and refused here.
_HEAP_SIGNATURE = b"GCOL"


def _check_hdf5_heaps(data, start: int, end: int, where: str):
    """Walk every global heap collection of the HDF5 file in ``data[start:end]`` as HDF5 does."""
    length_size = 8
    head = bytes(data[start:start + 16])
    if head[:8] == b"\x89HDF\r\n\x1a\n" and len(head) == 16:  # superblock: "size of lengths"
        length_size = head[14] if head[8] in (0, 1) else head[10]
        if length_size not in (2, 4, 8):
            raise ModelLoadError(f"{where} is not a readable HDF5 file: its superblock declares "
                                 f"{length_size}-byte lengths; expected 2, 4 or 8")
    header = 8 + length_size  # collection: signature, version, reserved, size; object: index,
    offset = data.find(_HEAP_SIGNATURE, start, end)  # references, reserved, size
    while offset >= 0:
        head = bytes(data[offset:offset + header])
        collection = int.from_bytes(head[8:header], "little")
        if len(head) == header and head[4] == 1 and header <= collection <= end - offset:
            body = bytes(data[offset:offset + collection])
            position = header
            while position + header <= collection:
                index = int.from_bytes(body[position:position + 2], "little")
                object_size = int.from_bytes(body[position + 8:position + header], "little")
                need = object_size if index == 0 else header + (object_size + 7) // 8 * 8
                if need == 0 or need > collection - position:
                    raise ModelLoadError(
                        f"{where} is not a readable HDF5 file: the global heap at byte {offset - start} "
                        f"holds an object of {object_size} bytes at byte {offset - start + position}, "
                        f"which {'never ends' if need == 0 else 'runs past the heap'}; the file is damaged")
                position += need
        offset = data.find(_HEAP_SIGNATURE, offset + 1, end)


def _check_hdf5_datasets(h5, size: int, where: str):
    """Refuse datasets that declare far more data than the file could hold."""
    import h5py
    import numpy as np

    limit = size * 1100 + (1 << 20)  # deflate expands at most ~1000x; Keras stores weights raw
    found = []
    h5.visititems(lambda name, item: found.append((name, item)) if isinstance(item, h5py.Dataset)
                  else None)
    for name, dataset in found:
        declared = int(np.prod(dataset.shape, dtype=object) if dataset.shape else 1) * dataset.dtype.itemsize
        if declared > limit:
            raise ModelLoadError(
                f"{where} declares dataset {name!r} of shape {dataset.shape} ({declared} bytes), more "
                f"than a {size}-byte file can hold; the file is damaged")


def _read_proto(path: str, message, what: str):
    """Parse ``path`` (binary, or text for a ``.pbtxt`` or when binary fails) into ``message``."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise ModelLoadError(f"cannot read {what} {path!r}: {error}") from error
    try:
        if path.lower().endswith(".pbtxt"):
            raise protobuf_message.DecodeError("a text file")
        message.ParseFromString(data)
    except protobuf_message.DecodeError as binary_error:
        try:
            message.Clear()
            text_format.Merge(data.decode("utf-8"), message)
        except (text_format.ParseError, UnicodeDecodeError):
            raise ModelLoadError(f"{path!r} is not a readable {what} ({binary_error})") from None
    return message


def _check_saved_model_graphs(path: str):
    """Check the graphs of a SavedModel's ``saved_model.pb`` before TensorFlow loads them."""
    from tensorflow.core.protobuf import saved_model_pb2

    name = "saved_model.pb" if os.path.exists(os.path.join(path, "saved_model.pb")) else "saved_model.pbtxt"
    saved = _read_proto(os.path.join(path, name), saved_model_pb2.SavedModel(), "SavedModel")
    if not saved.meta_graphs:
        raise ModelLoadError(f"SavedModel {path!r} holds no graph; expected a folder written by "
                             "tf.saved_model.save or model.export")
    for index, meta_graph in enumerate(saved.meta_graphs):
        check_graph_def(meta_graph.graph_def, f"SavedModel {path} (graph {index})")


def _load_saved_model(path: str) -> FrozenModel:
    _check_saved_model_graphs(path)
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
    from tensorflow.core.protobuf import meta_graph_pb2

    meta_graph = _read_proto(path, meta_graph_pb2.MetaGraphDef(), "TF1 meta graph")
    check_graph_def(meta_graph.graph_def, f"meta graph {path}")
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf.compat.v1.train.import_meta_graph(meta_graph, clear_devices=True)
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
_keras_freezes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    # No AutoGraph: Keras 3 never relies on it (its own predict and export
    # trace without it), and it would write the converted source of ``call``
    # to a temporary file that stays until the process exits.
    function = tf.function(call, autograph=False)
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

    def names_matched(component: str) -> tuple:
        """The names that ``matches(component, name)`` accepts: itself, and itself less one ``_<digits>``."""
        stripped = re.fullmatch(r"(.+)_\d+", component)
        return (component, stripped.group(1)) if stripped else (component,)

    # Scope path -> the nodes under it, in graph order: each node is listed under every
    # path its name's components match, so each layer costs one lookup, not a pass over the graph.
    members_of: dict[tuple, list] = {}
    for node in nodes:
        paths = [()]
        for component in node.name.split("/")[:-1]:
            paths = [path + (name,) for path in paths for name in names_matched(component)]
            for path in paths:
                members_of.setdefault(path, []).append(node)

    table: dict[str, str] = {}

    def visit(container, scope: list[str], prefix: str):
        for layer in getattr(container, "layers", []):
            if type(layer).__name__ == "InputLayer":
                continue
            path = scope + [layer.name]
            members = members_of.get(tuple(path), [])
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
    # Freezing leaves calls of functions Grappler will not inline (Keras's grouped
    # convolutions run in one marked for XLA); their ops must be the graph's own.
    graph_def = inline_function_calls(frozen.graph.as_graph_def(), description)
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
    # Anything computed from an excluded node is excluded too: a walk over the
    # consumers, linear in the graph's size whatever the order of its nodes.
    consumers: dict[str, list[str]] = {}
    for node in graph_def.node:
        for inp in node.input:
            consumers.setdefault(inp.lstrip("^").split(":")[0], []).append(node.name)
    stack = list(excluded)
    while stack:
        for reader in consumers.get(stack.pop(), ()):
            if reader not in excluded:
                excluded.add(reader)
                stack.append(reader)
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
        return _freeze_graph_def(graph_def, description, check=False)
    try:
        frozen = convert_variables_to_constants_from_session_graph(session, graph_def, names)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot read the variables of {description}: {error}; make sure the session has "
            "initialized or restored them") from error
    return _freeze_graph_def(frozen, description, check=False)


def _freeze_graph(graph: tf.Graph) -> FrozenModel:
    graph_def = graph.as_graph_def()
    if not any(node.op in VARIABLE_OPS for node in graph_def.node):
        return _freeze_graph_def(graph_def, "tf.Graph", check=False)
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


def _freeze_graph_def(graph_def, description: str, check: bool = True, content_sizes=None) -> FrozenModel:
    """``check=False`` for a graph TensorFlow built itself (a live graph or session)."""
    if any(node.op in VARIABLE_OPS for node in graph_def.node):
        raise ModelLoadError(
            f"{description} still holds variables; freeze it first, or pass the tf.Graph or "
            "tf.compat.v1.Session that owns them")
    if check:
        check_graph_def(graph_def, description, content_sizes)
    graph_def = inline_function_calls(graph_def, description)
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
    if check:
        _check_shapes(pruned, description)
    aliases = {name.split(":")[0]: name for name in inputs}
    return FrozenModel(graph_def=pruned, inputs=inputs, input_aliases=aliases, source=description)


# --------------------------------------------------------------------------- checks of graphs from files
#
# TensorFlow's importer trusts much of a GraphDef: an input port of 2**31
# crashes the process, and other damage (a cycle, a missing input, an
# unregistered op, a wrong attr type, a constant whose declared shape does
# not fit its content) surfaces later as assorted exception types. A graph
# read from a file is therefore checked here first, in one pass over its
# nodes, and refused with a ModelLoadError that names the bad node.

_NAME = r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*"
_NODE_NAME = re.compile(_NAME + r"\Z")
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\\/<>-]*\Z")  # "__inference_<lambda>_12" too
_GRAPH_INPUT = re.compile(r"(\^)?(" + _NAME + r")(?::(\d+))?\Z")
_FUNCTION_INPUT = re.compile(r"(\^)?([A-Za-z0-9_.][A-Za-z0-9_.\\/>-]*)(?::([A-Za-z0-9_]+)(?::(\d+))?)?\Z")
_MAX_RANK = 254
_MAX_SHAPE_ELEMENTS = 2**62  # a declared shape (placeholders, outputs) may not overflow int64
# A constant may repeat its last value to fill its shape; this bounds what
# such a splat can claim (a constant's explicit content is bounded by the file).
_MAX_SPLAT_BYTES = 1 << 30
_MAX_PORT = 2**20
_ATTR_FIELD = {"int": "i", "float": "f", "bool": "b", "string": "s", "type": "type", "shape": "shape",
               "tensor": "tensor", "func": "func"}
_VALUE_FIELDS = ("half_val", "float_val", "double_val", "int_val", "string_val", "scomplex_val",
                 "int64_val", "bool_val", "dcomplex_val", "uint32_val", "uint64_val", "float8_val")
_ACYCLIC = ("TensorFlow graphs must be acyclic (only a NextIteration node of a TF1 while loop may feed "
            "an earlier node)")


def _valid_dtypes() -> frozenset:
    from tensorflow.core.framework import types_pb2

    return frozenset(value for value in types_pb2.DataType.values() if 0 < value < 100)


_DTYPES = _valid_dtypes()
_NOT_CONSTANT_DTYPES = frozenset({20, 21})  # resource, variant


def _dtype_text(value: int) -> str:
    try:
        return tf.dtypes.as_dtype(value).name
    except TypeError:
        return str(value)


def _op_def(op: str):
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op)


class _GraphCheck:
    """One pass over a GraphDef (or a function body) that raises on the first problem."""

    def __init__(self, description: str, functions: dict, content_sizes=None):
        self.description = description
        self.functions = functions  # name -> FunctionDef of the graph's library
        self.content_sizes = content_sizes  # node index -> its "value" tensor's content size

    def fail(self, where: str, problem: str):
        raise ModelLoadError(f"{self.description} is not a valid TensorFlow graph: {where} {problem}")

    # ---- attrs

    def check_dtype(self, where, key, value):
        if value not in _DTYPES:
            kind = "a reference type" if value > 100 and value - 100 in _DTYPES else "not a data type"
            self.fail(where, f"has attr {key!r} = {value} ({_dtype_text(value)}), which is {kind}; "
                      "expected a plain dtype such as DT_FLOAT")

    def check_shape(self, where, key, shape):
        if shape.unknown_rank:
            return
        if len(shape.dim) > _MAX_RANK:
            self.fail(where, f"has attr {key!r} with a shape of rank {len(shape.dim)}; at most "
                      f"{_MAX_RANK} dimensions are accepted")
        elements = 1
        for dim in shape.dim:
            if dim.size < -1:
                self.fail(where, f"has attr {key!r} with dimension {dim.size}; dimensions must be "
                          ">= 0, or -1 for unknown")
            if dim.size > 0:
                elements *= dim.size
        if elements > _MAX_SHAPE_ELEMENTS:
            self.fail(where, f"has attr {key!r} with shape {[d.size for d in shape.dim][:8]}, which "
                      f"declares more than 2**62 elements")

    def check_tensor(self, where, key, tensor, dtype=None, content=None):
        if tensor.dtype not in _DTYPES or tensor.dtype in _NOT_CONSTANT_DTYPES:
            self.fail(where, f"holds a tensor {key!r} of dtype {_dtype_text(tensor.dtype)}; expected a "
                      "numeric, bool or string constant")
        if dtype is not None and tensor.dtype != dtype:
            self.fail(where, f"declares dtype {_dtype_text(dtype)} but its value {key!r} is "
                      f"{_dtype_text(tensor.dtype)}; the two must agree")
        shape = tensor.tensor_shape
        dims = [dim.size for dim in shape.dim]
        if shape.unknown_rank or len(dims) > _MAX_RANK or any(size < 0 for size in dims):
            self.fail(where, f"holds a tensor {key!r} of shape "
                      f"{'unknown' if shape.unknown_rank else dims[:8]}; a constant needs a known "
                      f"shape of at most {_MAX_RANK} dimensions, each >= 0")
        elements = 1
        for size in dims:
            elements *= size
        itemsize = tf.dtypes.as_dtype(tensor.dtype).size
        if content is None:
            content = len(tensor.tensor_content)
        if content and tensor.dtype == 7:
            self.fail(where, f"holds a string tensor {key!r} with {content} bytes of raw content; "
                      "strings are stored one by one (string_val)")
        if content:
            if content != elements * itemsize:
                self.fail(where, f"holds a tensor {key!r} of shape {dims[:8]} ({elements} elements of "
                          f"{_dtype_text(tensor.dtype)}) whose content is {content} bytes; expected "
                          f"{elements * itemsize}")
            return
        values = sum(len(getattr(tensor, field)) for field in _VALUE_FIELDS)
        if tensor.dtype in (8, 18):  # complex: two numbers per element
            values = (values + 1) // 2
        if values > elements:
            self.fail(where, f"holds a tensor {key!r} of shape {dims[:8]} ({elements} elements) with "
                      f"{values} values; expected at most one value per element")
        if values < elements and elements * max(itemsize, 1) > _MAX_SPLAT_BYTES:
            self.fail(where, f"holds a tensor {key!r} of shape {dims[:8]} that would fill "
                      f"{elements * max(itemsize, 1)} bytes from {values} value(s) in the file; "
                      f"at most {_MAX_SPLAT_BYTES} bytes are accepted")

    def check_attr_value(self, where, key, value, expected=None, in_function=False, content=None,
                         dtype=None):
        """``value`` of attr ``key``; ``expected`` is the op def's type string (None: not declared)."""
        field = value.WhichOneof("value")
        if field == "placeholder":
            if not in_function:
                self.fail(where, f"has attr {key!r} referring to a function attr {value.placeholder!r} "
                          "outside a function")
            return
        if expected is not None:
            if expected.startswith("list("):
                if field not in ("list", None):
                    self.fail(where, f"has attr {key!r} of kind {field!r}; the op expects {expected}")
                want = _ATTR_FIELD.get(expected[5:-1])
                wrong = [f.name for f, _ in value.list.ListFields() if f.name != want]
                if wrong:
                    self.fail(where, f"has attr {key!r} holding a list of {wrong[0]!r} values; the op "
                              f"expects {expected}")
            elif field != _ATTR_FIELD.get(expected, expected):
                self.fail(where, f"has attr {key!r} of kind {field or 'nothing'!r}; the op expects "
                          f"{expected}")
        if field == "type":
            self.check_dtype(where, key, value.type)
        elif field == "shape":
            self.check_shape(where, key, value.shape)
        elif field == "tensor":
            self.check_tensor(where, key, value.tensor, dtype, content)
        elif field == "func":
            self.check_function_name(where, key, value.func.name)
        elif field == "list":
            for dtype in value.list.type:
                self.check_dtype(where, key, dtype)
            for shape in value.list.shape:
                self.check_shape(where, key, shape)
            for tensor in value.list.tensor:
                self.check_tensor(where, key, tensor)
            for func in value.list.func:
                self.check_function_name(where, key, func.name)

    def check_function_name(self, where, key, name):
        if name not in self.functions and _op_def(name) is None:
            self.fail(where, f"has attr {key!r} naming function {name!r}, which the graph's library "
                      "does not define")

    def check_attrs(self, where, node, op_def, in_function=False, content=None):
        declared = {attr.name: attr for attr in op_def.attr} if op_def is not None else {}
        # A constant's value must have the dtype the node declares: the weights
        # are later read by that dtype.
        dtype = node.attr["dtype"].type if node.op in ("Const", "HostConst") and "dtype" in node.attr else None
        for key, value in node.attr.items():  # an attr the op lacks is TensorFlow's to judge:
            spec = declared.get(key)  # a meta graph's loader drops those a newer version added
            value_of = key == "value"
            self.check_attr_value(where, key, value, spec.type if spec else None, in_function,
                                  content if value_of else None, dtype if value_of else None)
        for key, spec in declared.items():
            if key not in node.attr:
                if not spec.HasField("default_value"):
                    self.fail(where, f"lacks attr {key!r} ({spec.type}), which op {node.op} requires")
                continue
            value = node.attr[key]
            if value.WhichOneof("value") == "placeholder":
                continue
            allowed = spec.allowed_values.list if spec.HasField("allowed_values") else None
            if allowed is not None:
                if spec.type == "type" and allowed.type and value.type not in allowed.type:
                    self.fail(where, f"has attr {key!r} = {_dtype_text(value.type)}; op {node.op} "
                              f"accepts {', '.join(_dtype_text(t) for t in allowed.type)}")
                if spec.type == "list(type)" and allowed.type:
                    for dtype in value.list.type:
                        if dtype not in allowed.type:
                            self.fail(where, f"has {_dtype_text(dtype)} in attr {key!r}; op {node.op} "
                                      f"accepts {', '.join(_dtype_text(t) for t in allowed.type)}")
                if spec.type == "string" and allowed.s and value.s not in allowed.s:
                    self.fail(where, f"has attr {key!r} = {value.s[:40]!r}; op {node.op} accepts "
                              f"{', '.join(s.decode(errors='replace') for s in allowed.s)}")
            if spec.has_minimum:
                if spec.type == "int" and value.i < spec.minimum:
                    self.fail(where, f"has attr {key!r} = {value.i}; op {node.op} needs at least "
                              f"{spec.minimum}")
                if spec.type.startswith("list(") and len(getattr(value.list, _ATTR_FIELD.get(
                        spec.type[5:-1], "i"))) < spec.minimum:
                    self.fail(where, f"has attr {key!r} with fewer than {spec.minimum} values, "
                              f"which op {node.op} needs")

    # ---- arity

    def arg_count(self, node, args, fixed_only=False):
        """How many tensors ``args`` (input or output args of an op) stand for on ``node``."""
        count = 0
        for arg in args:
            if arg.number_attr:
                value = node.attr.get(arg.number_attr)
                if value is None or value.WhichOneof("value") != "i":
                    return None
                count += value.i
            elif arg.type_list_attr:
                value = node.attr.get(arg.type_list_attr)
                if value is None or value.WhichOneof("value") == "placeholder":
                    return None
                count += len(value.list.type)
            else:
                count += 1
        return count

    def signature(self, node):
        """The OpDef of ``node``'s op (a registered op or a function of the library)."""
        function = self.functions.get(node.op)
        if function is not None:
            return function.signature
        return _op_def(node.op)

    # ---- graph

    def check_graph(self, nodes):
        signatures, names = {}, {}
        sizes = self.content_sizes
        for position, node in enumerate(nodes):
            where = f"node {node.name!r}"
            if not _NODE_NAME.match(node.name):
                self.fail(f"a node named {node.name[:60]!r}", "has a name TensorFlow does not accept; "
                          "names are letters, digits and . _ - / > (not starting with _ - / >)")
            if node.name in names:
                self.fail(where, "is defined twice; node names must be unique")
            names[node.name] = node
            op_def = self.signature(node)
            if op_def is None:
                self.fail(where, f"has op {node.op[:60]!r}, which is not an op of TensorFlow "
                          f"{tf.__version__} nor a function of the graph's library")
            signatures[node.name] = op_def
            self.check_attrs(where, node, op_def if node.op not in self.functions else None,
                             content=sizes[position] if sizes is not None else None)
        edges = {}
        for node in nodes:
            where = f"node {node.name!r}"
            sources, data, control = [], 0, False
            for text in node.input:
                match = _GRAPH_INPUT.match(text)
                if match is None:
                    self.fail(where, f"has input {text[:60]!r}, which is not 'name', 'name:port' or "
                              "'^name'")
                is_control, source, port = match.group(1), match.group(2), match.group(3)
                if source not in names:
                    self.fail(where, f"reads {text[:60]!r}, but the graph has no node {source[:60]!r}; "
                              "every input must name a node of the graph")
                if is_control:
                    control = True
                else:
                    if control:
                        self.fail(where, f"lists data input {text[:60]!r} after a control input; "
                                  "control inputs ('^name') must come last")
                    data += 1
                    port = int(port or 0)
                    outputs = self.arg_count(names[source], signatures[source].output_arg)
                    limit = outputs if outputs is not None else _MAX_PORT
                    if port >= limit:
                        self.fail(where, f"reads output {port} of {source!r}, which has "
                                  f"{outputs if outputs is not None else 'fewer'} output(s)")
                if names[source].op != "NextIteration":  # the back edge of a TF1 while loop
                    sources.append(source)
            expected = self.arg_count(node, signatures[node.name].input_arg)
            if expected is not None and data != expected:
                self.fail(where, f"has {data} data input(s); op {node.op} takes {expected}")
            edges[node.name] = sources
        self.check_acyclic(edges)

    def check_acyclic(self, edges: dict):
        """Kahn's algorithm over ``edges`` (node -> the nodes it reads)."""
        waiting = {name: len(sources) for name, sources in edges.items()}
        readers: dict[str, list] = {}
        for name, sources in edges.items():
            for source in sources:
                readers.setdefault(source, []).append(name)
        ready = [name for name, count in waiting.items() if count == 0]
        while ready:
            name = ready.pop()
            for reader in readers.get(name, ()):
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    ready.append(reader)
        left = {name for name, count in waiting.items() if count > 0}
        if not left:
            return
        # Walk back from a node left over until a node repeats: that part is the cycle.
        path, seen = [], {}
        name = min(left)
        while name not in seen:
            seen[name] = len(path)
            path.append(name)
            name = next(source for source in edges[name] if source in left)
        cycle = path[seen[name]:]
        shown = " <- ".join(repr(n) for n in (cycle + cycle[:1])[:8]) + (" ..." if len(cycle) > 7 else "")
        self.fail(f"node {cycle[0]!r}", f"is in a cycle ({shown}); {_ACYCLIC}")

    # ---- functions

    def check_function(self, function):
        name = function.signature.name
        where_prefix = f"function {name!r}:"
        args = {arg.name for arg in function.signature.input_arg}
        nodes, edges = {}, {}
        for node in function.node_def:
            where = f"{where_prefix} node {node.name!r}"
            if not _FUNCTION_NAME.match(node.name) or node.name in nodes or node.name in args:
                self.fail(where, "has an invalid or repeated name")
            op_def = self.signature(node)
            if op_def is None:
                self.fail(where, f"has op {node.op[:60]!r}, which is not an op of TensorFlow "
                          f"{tf.__version__} nor a function of the graph's library")
            self.check_attrs(where, node, op_def if node.op not in self.functions else None, True)
            nodes[node.name] = node
        for node in function.node_def:
            where = f"{where_prefix} node {node.name!r}"
            sources = []
            for text in node.input:
                match = _FUNCTION_INPUT.match(text)
                if match is None:
                    self.fail(where, f"has input {text[:60]!r}, which is not 'arg', 'node:output:index' "
                              "or '^node'")
                source, index = match.group(2), match.group(4)
                if source not in nodes and source not in args:
                    self.fail(where, f"reads {text[:60]!r}, but the function has no node or argument "
                              f"{source[:60]!r}")
                if index is not None and int(index) >= _MAX_PORT:
                    self.fail(where, f"reads output index {index} of {source!r}")
                if source in nodes and nodes[source].op != "NextIteration":
                    sources.append(source)
            edges[node.name] = sources
        for output, text in function.ret.items():
            match = _FUNCTION_INPUT.match(text)
            if match is None or (match.group(2) not in nodes and match.group(2) not in args):
                self.fail(where_prefix, f"returns {output!r} from {text[:60]!r}, which names no node "
                          "or argument of the function")
        self.check_acyclic(edges)

    def check_calls(self):
        """No function of the library calls itself, directly or through others."""
        calls = {}
        for name, function in self.functions.items():
            called = set()
            for node in function.node_def:
                if node.op in self.functions:
                    called.add(node.op)
                for value in node.attr.values():
                    if value.WhichOneof("value") == "func":
                        called.add(value.func.name)
                    elif value.WhichOneof("value") == "list":
                        called.update(func.name for func in value.list.func)
            calls[name] = sorted(called & set(self.functions))
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for start in sorted(calls):
            if state.get(start):
                continue
            stack = [(start, iter(calls[start]))]
            state[start] = 1
            while stack:
                name, pending = stack[-1]
                callee = next(pending, None)
                if callee is None:
                    state[name] = 2
                    stack.pop()
                elif state.get(callee) == 1:
                    path = [frame[0] for frame in stack]
                    cycle = path[path.index(callee):] + [callee]
                    self.fail(f"function {callee!r}", "calls itself (" + " -> ".join(map(repr, cycle))
                              + "); TensorFlow functions cannot recurse")
                elif not state.get(callee):
                    state[callee] = 1
                    stack.append((callee, iter(calls[callee])))


def _varint(data, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _messages(data, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the message in data[start:end]."""
    position = start
    while position < end:
        key, position = _varint(data, position)
        wire = key & 7
        if wire == 2:
            length, position = _varint(data, position)
            yield key >> 3, position, position + length
            position += length
        elif wire == 0:
            _, position = _varint(data, position)
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
    if position != end:
        raise ValueError("a field runs past its message")


# Wire numbers: GraphDef.node, NodeDef.attr (entries: key, value), AttrValue.tensor (the other
# fields of AttrValue share its oneof), TensorProto.tensor_content.
_GRAPH_NODE, _NODE_ATTR, _ENTRY_KEY, _ENTRY_VALUE, _ATTR_TENSOR, _TENSOR_CONTENT = 1, 5, 1, 2, 8, 4
_ATTR_ONEOF = frozenset(range(1, 11))  # list, s, i, f, b, type, shape, tensor, placeholder, func


def _content_sizes(data: bytes, count: int) -> list | None:
    """Per node of the binary GraphDef ``data``: the size of its ``value`` attr's tensor content.

    Read from the wire format, with protobuf's rules for repeated fields
    (the last wins, a oneof field of another kind clears the tensor), so
    the constants' contents, nearly the whole file, need not be copied out
    of the parsed graph to be measured. None when the bytes do not parse
    as expected (the caller then measures the parsed graph).
    """
    view = memoryview(data)
    sizes = []
    try:
        for field, start, end in _messages(view, 0, len(view)):
            if field != _GRAPH_NODE:
                continue
            size = 0
            for attr_field, entry_start, entry_end in _messages(view, start, end):
                if attr_field != _NODE_ATTR:
                    continue
                key, tensor = None, None  # tensor: content size while the attr holds a tensor
                for entry_field, value_start, value_end in _messages(view, entry_start, entry_end):
                    if entry_field == _ENTRY_KEY:
                        key = bytes(view[value_start:value_end])
                    elif entry_field == _ENTRY_VALUE:
                        tensor = _attr_content(view, value_start, value_end, tensor)
                if key == b"value":
                    size = tensor or 0
            sizes.append(size)
    except (ValueError, IndexError):
        return None
    return sizes if len(sizes) == count else None


def _attr_content(view, start: int, end: int, tensor):
    """The content size of an AttrValue's tensor after merging the message in view[start:end]."""
    position = start
    while position < end:
        key, position = _varint(view, position)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, position = _varint(view, position)
            if field == _ATTR_TENSOR:
                tensor = tensor or 0
                for tensor_field, content_start, content_end in _messages(view, position, position + length):
                    if tensor_field == _TENSOR_CONTENT:
                        tensor = content_end - content_start
            elif field in _ATTR_ONEOF:
                tensor = None  # another member of the oneof
            position += length
        elif wire in (0, 1, 5):
            if wire == 0:
                _, position = _varint(view, position)
            else:
                position += 8 if wire == 1 else 4
            if field in _ATTR_ONEOF:
                tensor = None
        else:
            raise ValueError(f"wire type {wire}")
    if position != end:
        raise ValueError("a field runs past its message")
    return tensor


_FLOAT_TYPES = frozenset({1, 2, 14, 19})  # float, double, bfloat16, half: the weights


def _check_shapes(graph_def, description: str):
    """Import the graph without its weights' values, to run every op's shape function once.

    Shapes that do not fit together (a rank-3 input into a convolution, an
    axis out of range) are only found by TensorFlow's shape functions. Each
    floating-point constant becomes a placeholder of its shape, as it
    becomes a variable of its shape when the graph is rebuilt, so this
    costs no copy of the weights.
    """
    skeleton = tf.compat.v1.GraphDef()
    skeleton.versions.CopyFrom(graph_def.versions)
    skeleton.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type in _FLOAT_TYPES:
            stand_in = skeleton.node.add(name=node.name, op="Placeholder", input=node.input)
            stand_in.attr["dtype"].type = node.attr["dtype"].type
            stand_in.attr["shape"].shape.CopyFrom(node.attr["value"].tensor.tensor_shape)
        else:
            skeleton.node.add().CopyFrom(node)
    try:
        with tf.Graph().as_default():
            tf.import_graph_def(skeleton, name="")
    except (ValueError, TypeError, tf.errors.OpError) as error:
        message = getattr(error, "message", None) or str(error)
        raise ModelLoadError(f"{description} is not a valid TensorFlow graph: "
                             f"{message.strip().splitlines()[0][:600]}") from None


def check_graph_def(graph_def, description: str, content_sizes=None):
    """Refuse a GraphDef that TensorFlow's importer would crash or fail on, naming the bad part.

    Checks, in one pass over the nodes (and the bodies of the library's
    functions): names are valid and unique; every op is registered or a
    library function, with the attrs its definition requires, of the right
    kinds, dtypes and allowed values; every input names an existing node
    and an existing output of it, in the declared number; the graph has no
    cycle (except the back edges of TF1 while loops); declared shapes are
    not absurd, and each constant's content fits its declared shape; no
    function calls itself; and the graph's versions are ones this
    TensorFlow reads.
    """
    versions = graph_def.versions
    if versions.producer < tf.version.GRAPH_DEF_VERSION_MIN_PRODUCER or (
            versions.min_consumer > tf.version.GRAPH_DEF_VERSION) or (
            tf.version.GRAPH_DEF_VERSION in versions.bad_consumers):
        raise ModelLoadError(
            f"{description} declares graph versions producer={versions.producer}, min_consumer="
            f"{versions.min_consumer}, which TensorFlow {tf.__version__} cannot read (it reads "
            f"producers >= {tf.version.GRAPH_DEF_VERSION_MIN_PRODUCER} needing a consumer <= "
            f"{tf.version.GRAPH_DEF_VERSION})")
    functions = {}
    for function in graph_def.library.function:
        name = function.signature.name
        if not _FUNCTION_NAME.match(name) or name in functions:
            raise ModelLoadError(f"{description} is not a valid TensorFlow graph: its library defines "
                                 f"function {name[:60]!r} twice or under an invalid name")
        functions[name] = function
    check = _GraphCheck(description, functions, content_sizes)
    check.check_graph(graph_def.node)
    for function in functions.values():
        check.check_function(function)
    check.check_calls()
