"""The checkpoint room: model files and weight files that are never lost, never half-written, never silently wrong.

A model file is one SameDiff FlatBuffers file (any DL4J M2.1 program can ``SameDiff.load`` it) followed by a
24-byte footer (magic, length, CRC32C of everything before it), which readers of FlatBuffers ignore. The
Python metadata (placeholder dims, static shapes, ``graph.meta``: feed contracts, masks, dropout, trainer
configuration) travels inside the same file as a UTF-8 constant named ``samediff_py.meta``.

Every write goes through :func:`atomic_write`: a temporary file in the target folder, written, fsynced and
VERIFIED (for models: read back, checksum, every variable present, metadata equal), then renamed over the
target and the folder fsynced. A killed save leaves the previous file intact; its stray temporary file is
removed by the next save to that folder.

>>> import numpy as np, tempfile, os
>>> from samediff_py import Graph, ops
>>> g = Graph()
>>> x = g.placeholder("x", ("batch", 2))
>>> w = g.variable("w", np.ones((2, 1), np.float32))
>>> y = ops.matmul(x, w, name="y")
>>> path = os.path.join(tempfile.mkdtemp(), "model.sdz")
>>> _ = save(g, path)
>>> load(path).run({"x": [[1.0, 2.0]]}, "y")
array([[3.]], dtype=float32)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import _jvm, arrays
from .errors import ModelFileError
from .graph import Graph, PlaceholderSpec, Var

__all__ = ["FORMAT", "ModelFileError", "atomic_write", "export_weights", "import_weights", "load", "save"]

FORMAT = "samediff_py/1"
_KINDS = {"VARIABLE": "variable", "CONSTANT": "constant", "PLACEHOLDER": "placeholder", "ARRAY": "op"}
_TMP_SUFFIX = ".tmp"


def _training() -> Any:
    return _jvm.jclass("samediffpy.Training")


# ============================================================================ atomic writes
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stray_temps(target: Path) -> None:
    """Delete temporary files of saves to ``target`` whose process is gone (killed mid-save)."""
    for p in target.parent.glob(f".{target.name}.*{_TMP_SUFFIX}"):
        parts = p.name[len(target.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            with contextlib.suppress(OSError):
                p.unlink()


def _os_reason(e: OSError) -> str:
    code = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e} ({code})" if code else str(e)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is fsynced and renamed over ``path``.

    The writer inside the block writes (and verifies) the temporary file. Any failure deletes it, leaves
    ``path`` untouched and raises :class:`ModelFileError` with the reason (the OS's for disk full, read-only
    folders, permissions).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelFileError(path, f"folder {folder} does not exist")
    _remove_stray_temps(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=folder)
        os.close(fd)
    except OSError as e:
        raise ModelFileError(path, f"cannot write in {folder}: {_os_reason(e)}") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint gets ordinary file permissions
        os.replace(tmp, path)
    except ModelFileError:
        raise
    except _jvm.JavaError as e:
        raise ModelFileError(path, f"save failed: {e.java_message or e.java_class}") from None
    except OSError as e:
        raise ModelFileError(path, f"save failed: {_os_reason(e)}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(folder)


# ============================================================================ model files
def _metadata(graph: Graph) -> str:
    doc = {
        "format": FORMAT,
        "dtype": graph.dtype.name,
        "placeholders": {n: {"dims": list(s.dims), "dtype": s.dtype.name} for n, s in graph.placeholders.items()},
        "vars": {n: {"shape": list(v.shape), "kind": v.kind} for n, v in graph.vars.items()},
        "meta": graph.meta,
    }
    try:
        return json.dumps(doc, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"graph.meta must be JSON-serialisable to be saved: {e}") from None


def save(graph: Graph, path: str | os.PathLike, updater_state: bool = True, *, force: bool = False) -> Path:
    """Save ``graph`` (weights, graph, metadata and, with ``updater_state``, the optimiser state) to ``path``.

    Args:
        graph: the graph.
        path: the model file; its folder must exist. Replaced atomically (see the module docstring).
        updater_state: include the updater state, so training continues exactly after :func:`load`.
        force: save even if a trainable variable holds NaN or infinity (refused by default: such a file
            would silently replace a good checkpoint with a broken model).

    Returns:
        ``path``.

    Raises:
        ModelFileError: the folder is missing or not writable, the disk is full, the written file failed
            verification, or (without ``force``) a weight is not finite.
    """
    path = Path(path)
    meta = _metadata(graph)
    with _jvm.java_errors():
        bad = _training().firstNonFinite(graph.sd)
    if bad is not None and not force:
        raise ModelFileError(path, f"variable {bad!r} holds NaN or infinity; pass force=True to save it anyway")
    with atomic_write(path) as tmp, _jvm.java_errors():
        _jvm.bridge().alignOpNames(graph.sd)  # (a no-op for graphs built through Graph.op)
        _training().writeModel(graph.sd, str(tmp), bool(updater_state), meta)
        # read back before the rename: no bug of the writer can replace a good checkpoint with a bad one
        _training().verifyModel(graph.sd, str(tmp), meta)
    return path


def load(path: str | os.PathLike, updater_state: bool = True) -> Graph:
    """Load a model file written by :func:`save` (or any SameDiff FlatBuffers file) into a new :class:`Graph`.

    Every SameDiff variable gets a Python Var; the feed contracts saved with the model are enforced again.
    Files written by samediff_py are checksummed: a changed byte is refused. Any failure raises
    :class:`ModelFileError` naming the file and the reason; nothing crashes.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "no such file")
    if not path.is_file():
        raise ModelFileError(path, "not a regular file")
    if path.stat().st_size < 8:
        raise ModelFileError(path, f"too small to be a SameDiff model ({path.stat().st_size} bytes)")
    try:
        with _jvm.java_errors():
            sd = _training().load(str(path), bool(updater_state))
            meta_json = _training().getMeta(sd)
            rows = list(_training().describe(sd))
    except _jvm.JavaError as e:
        cause = e.java_message or e.java_class
        raise ModelFileError(path, f"not a readable SameDiff (DL4J 1.0.0-M2.1) model: {cause}") from None
    if not rows:
        raise ModelFileError(path, "corrupt or not a model: the file holds no variables")
    meta: dict[str, Any] = {}
    if meta_json is not None:
        try:
            meta = json.loads(meta_json)
        except ValueError as e:
            raise ModelFileError(path, f"corrupt samediff_py metadata: {e}") from None
        if meta.get("format") != FORMAT:
            raise ModelFileError(path, f"unknown samediff_py metadata format {meta.get('format')!r}")
        present = {r.split("\t", 1)[0] for r in rows}
        lost = sorted(set(meta.get("vars", {})) - present)
        if lost:
            raise ModelFileError(path, f"corrupt: variables {lost[:5]} listed in the metadata are missing")
    return _rebuild(sd, rows, meta)


def _rebuild(sd: Any, rows: list[str], meta: dict[str, Any]) -> Graph:
    g = Graph(seed=0, dtype=meta.get("dtype", "float32"))
    g.sd = sd
    g.meta = meta.get("meta", {})
    var_meta = meta.get("vars", {})
    ph_meta = meta.get("placeholders", {})
    parents: dict[str, list[str]] = {}
    for row in rows:
        name, jkind, jdtype, shape_s, inputs = row.split("\t")
        dt = arrays.NUMPY_DTYPES.get(jdtype)
        kind = _KINDS.get(jkind)
        if dt is None or kind is None:
            continue  # dtypes samediff_py does not model (strings, bytes...) are left to SameDiff
        if name in var_meta:
            shape = tuple(var_meta[name]["shape"])
        elif shape_s == "?":
            shape = ()
        else:
            shape = tuple(int(d) for d in shape_s.split(",")) if shape_s else ()
        with _jvm.java_errors():
            j = sd.getVariable(name)
        v = Var(g, j, tuple(-1 if d is None else d for d in shape), dt, kind)
        g.vars[name] = v
        parents[name] = [p for p in inputs.split(",") if p]
        if kind == "placeholder":
            dims = tuple(ph_meta[name]["dims"]) if name in ph_meta else tuple(None if d is None else d for d in v.shape)
            g.placeholders[name] = PlaceholderSpec(name, dims, dt)
    for name, ps in parents.items():
        g.vars[name].parents = tuple(g.vars[p] for p in ps if p in g.vars)
    return g


# ============================================================================ weights: .safetensors or .npy
def _npy_name(var_name: str) -> str:
    return urllib.parse.quote(var_name, safe="") + ".npy"


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def export_weights(graph: Graph, path: str | os.PathLike) -> list[Path]:
    """Write every trainable variable, by its graph name, to ``path``.

    ``path`` ending in ``.safetensors``: one file in the ecosystem's format (Hugging Face, PyTorch, JAX read
    it; names are the variables' names); any other path: a folder with one ``<url-quoted name>.npy`` per
    variable. Every file is written atomically. Returns the files written.

    >>> import numpy as np, tempfile, os
    >>> from samediff_py import Graph
    >>> g = Graph()
    >>> w = g.variable("layer/w", np.eye(2, dtype=np.float32))
    >>> out = export_weights(g, os.path.join(tempfile.mkdtemp(), "weights.safetensors"))
    >>> import safetensors.numpy
    >>> safetensors.numpy.load_file(str(out[0]))["layer/w"]
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    path = Path(path)
    values = {v.name: graph.get_value(v) for v in graph.trainable()}
    if _is_safetensors(path):
        import safetensors.numpy

        with atomic_write(path) as tmp:
            safetensors.numpy.save_file(values, str(tmp), metadata={"format": "np", "producer": "samediff_py"})
        return [path]
    path.mkdir(parents=True, exist_ok=True)
    written = []
    for name, value in values.items():
        target = path / _npy_name(name)
        with atomic_write(target) as tmp, open(tmp, "wb") as f:
            np.save(f, value)
        written.append(target)
    return written


def import_weights(graph: Graph, path: str | os.PathLike, strict: bool = True) -> list[str]:
    """Set trainable variables from ``path``; returns the names set.

    ``path`` is a ``.safetensors`` file or a ``.npy`` folder, as written by :func:`export_weights`. ``strict``: every
    trainable variable must be present and every stored array must belong to one. Shapes and dtypes must match
    exactly (errors name the array).
    """
    path = Path(path)
    if _is_safetensors(path):
        if not path.is_file():
            raise FileNotFoundError(f"no weights file {path}")
        import safetensors.numpy

        try:
            stored = safetensors.numpy.load_file(str(path))
        except Exception as e:  # the package raises its own error types for malformed files
            raise ModelFileError(path, f"not a readable .safetensors file: {e}") from None
        arrays_by_name = {k: (lambda v=v: v) for k, v in stored.items()}
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"no weights folder {path}")
        files = {urllib.parse.unquote(p.name[: -len(".npy")]): p for p in path.glob("*.npy")}
        arrays_by_name = {k: (lambda p=p: np.load(p, allow_pickle=False)) for k, p in files.items()}
    names = [v.name for v in graph.trainable()]
    if strict:
        missing = sorted(set(names) - set(arrays_by_name))
        extra = sorted(set(arrays_by_name) - set(names))
        if missing or extra:
            raise ValueError(f"weights in {path} do not match the graph: missing {missing}, unknown {extra}")
    done = []
    for n in names:
        if n in arrays_by_name:
            value, var = arrays_by_name[n](), graph[n]
            if value.dtype != var.dtype:
                raise TypeError(f"{path}: {n!r} has dtype {value.dtype}, the variable is {var.dtype}")
            if value.shape != var.shape:
                raise ValueError(f"{path}: {n!r} has shape {value.shape}, the variable is {var.shape}")
            graph.set_value(var, value)
            done.append(n)
    return done
