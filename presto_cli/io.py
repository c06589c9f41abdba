"""Atomic file writes and the safetensors inference-artefact format."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from presto_cli import __version__
from presto_cli.errors import PrestoError, disk_full

ARTEFACT_KINDS = ("teacher", "presto-s", "presto-l", "ase", "presto-ls", "codec", "clap", "caption-bank", "latent-range",
                  "text-adapter")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _tmp_path(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary file beside ``path`` with ordinary permissions (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=str(path.parent))
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    return Path(tmp)


def _free_bytes(path: Path) -> int | None:
    try:
        v = os.statvfs(path)
        return v.f_bavail * v.f_frsize
    except OSError:
        return None


def _is_disk_full(exc: BaseException | None, where: Path) -> bool:
    """A failed write is a full disk when the error says so (ENOSPC) or, for writers that hide the
    reason (libsndfile's "System error", torch's "unexpected pos"), when under 1 MiB is left."""
    import errno

    if not isinstance(exc, Exception) or isinstance(exc, PrestoError):
        return False
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    free = _free_bytes(where)
    return free is not None and free < 1 << 20


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = _is_disk_full(e, tmp)
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full(str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class atomic_path:
    """Context manager yielding a temporary path that replaces ``path`` only on success.

    >>> with atomic_path("out.wav") as tmp:
    ...     write_somehow(tmp)
    """

    def __init__(self, path: str | Path, suffix: str | None = None):
        self.path = Path(path)
        self.suffix = suffix if suffix is not None else self.path.suffix

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_path(self.path, ".tmp" + self.suffix)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.chmod(self.tmp, _umask_mode())  # writers that recreate the file (safetensors) reset it
            os.replace(self.tmp, self.path)
        else:
            full = _is_disk_full(exc, self.tmp)
            self.tmp.unlink(missing_ok=True)
            if full:  # named as such, not as the writer's own words
                raise disk_full(str(self.path)) from None
        return False


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_artefact(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict,
                  dtype: torch.dtype | None = None) -> None:
    """Write an inference artefact: tensors + ``meta`` (JSON) in the safetensors metadata.

    ``meta`` must contain ``kind``. ``dtype`` (e.g. torch.float16) casts floating tensors.
    """
    from safetensors.torch import save_file

    if meta.get("kind") not in ARTEFACT_KINDS:
        raise ValueError(f"artefact kind must be one of {ARTEFACT_KINDS}, got {meta.get('kind')!r}")
    meta = dict(meta)
    meta.setdefault("version", __version__)
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out = {}
    for k, v in tensors.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(out, str(tmp), metadata={"presto": json.dumps(meta)})


def load_artefact(path: str | Path, device: str | torch.device = "cpu"):
    """Read an artefact written by :func:`save_artefact`: returns ``(tensors, meta)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PrestoError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = (f.metadata() or {}).get("presto")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except PrestoError:
        raise
    except Exception as e:  # safetensors raises various errors on corrupt files
        raise PrestoError(f"{path} is not a readable safetensors file: {type(e).__name__}",
                          "re-export the model or check the download") from None
    if raw is None:
        raise PrestoError(f"{path} has no presto metadata", "export it with presto (Task.export)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise PrestoError(f"{path} has corrupt presto metadata") from None
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:  # caught here, not as "NaN audio" after a whole sampling run
        raise PrestoError(f"{path} is broken: its weights hold NaN or Inf values (first in '{bad}')",
                          "re-export it from a good checkpoint with `presto export RUN --step N`, or retrain")
    if meta.get("codec_file") and not any(k.startswith("codec.") for k in tensors):
        tensors.update(_shared_codec(path, meta, device))
    return tensors, meta


def _shared_codec(path: Path, meta: dict, device) -> dict[str, torch.Tensor]:
    """The embedded codec of an artefact that stores it once beside itself (``meta["codec_file"]``,
    a file in the same folder, e.g. the bundled models and ``demo-codec.safetensors``): its tensors
    under ``codec.``. The keys are removed from ``meta`` so copies of it (students) embed the codec."""
    name = meta.pop("codec_file")
    digest = meta.pop("codec_sha256", None)
    src = path.parent / name
    if Path(name).name != name or not src.is_file():
        raise PrestoError(f"{path} keeps its codec in {name}, which is not beside it",
                          f"put {name} in {path.parent} (it ships with the model)")
    if digest is not None:
        import hashlib

        if hashlib.sha256(src.read_bytes()).hexdigest() != digest:
            raise PrestoError(f"{src} is not the codec {path.name} was made with (SHA-256 differs)",
                              "restore the codec file that came with the model")
    codec, cmeta = load_artefact(src, device)
    if cmeta.get("kind") != "codec":
        raise PrestoError(f"{src} is a '{cmeta.get('kind')}' artefact, not the codec {path.name} needs")
    return {"codec." + k: v for k, v in codec.items()}


def sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
                      allow_missing: tuple[str, ...] = ()) -> None:
    """load_state_dict that turns a recipe/weights mismatch into one clear PrestoError.

    ``allow_missing``: key prefixes of modules the file may lack (new zero-initialised modules
    added to a trained network, which keep their initial values)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not (allow_missing and k.startswith(allow_missing))]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad:
            k = bad[0]
            detail.append(f"{len(bad)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} vs "
                          f"{tuple(own[k].shape)})")
        raise PrestoError(f"the {what} weights do not match its recipe: {'; '.join(detail)}",
                          "the file was edited or exported by an incompatible presto")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=not allow_missing)


def read_artefact_meta(path: str | Path) -> dict:
    """The presto metadata of an artefact without reading its tensors (cheap: the header only)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PrestoError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get("presto")
        return json.loads(raw) if raw else {}
    except Exception as e:
        raise PrestoError(f"{path} is not a readable presto artefact: {type(e).__name__}") from None
