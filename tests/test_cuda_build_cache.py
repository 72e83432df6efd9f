"""The CUDA extension's build cache: concurrent first use and damaged caches.

These tests do NOT compile the extension: the real build takes 85 s or more here, so the
build step (``build._compile``) is replaced by a STAND-IN that sleeps, then writes a fake
library file, and the import step (``build._import_library``) by one that accepts exactly
that file. Everything around them is the real code: the cache key, the file lock, the
completion record and its checks, the repair of damaged builds. The real compile and a
reload of its cached build are in tests/test_cuda_build.py.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from danet_ops.backends import BackendUnavailableError
from danet_ops.cuda import build

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(build.fcntl is None, reason="the build lock needs fcntl (POSIX)")

# The stand-in, as source: installed in this process by the fixture below and in the
# subprocesses of the concurrency tests by the same text.
STAND_IN = textwrap.dedent('''
    import os, time, types
    from pathlib import Path
    from danet_ops.cuda import build

    def payload(name):
        return (b"stand-in library for " + name.encode() + b"\\n") * 4096  # ~100 KB

    def compile_stand_in(build_dir, name, src, archs, cuda_home, verbose):
        """Sleeps as a compiler would, writes files as it goes, counts itself in builds.log."""
        log = Path(os.environ["STAND_IN_LOG"])
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        (Path(build_dir) / "build.ninja").write_text("# stand-in\\n")
        (Path(build_dir) / "compiling").write_text(str(os.getpid()))
        time.sleep(float(os.environ.get("STAND_IN_SECONDS", "1.5")))
        library = Path(build_dir) / (name + ".so")
        library.write_bytes(payload(name))
        return import_stand_in(library, name)

    def import_stand_in(path, name):
        if Path(path).read_bytes() != payload(name):
            raise ImportError(f"stand-in: {path} is not the library the stand-in build wrote")
        module = types.ModuleType(name)
        module.__file__ = str(path)
        return module

    build._compile = compile_stand_in
    build._import_library = import_stand_in
    build.toolchain_problem = lambda: None
    build.find_cuda_home = lambda: "/nonexistent/cuda"  # only part of the cache key here
''')


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """This process with the stand-in build; yields (build root, builds.log)."""
    log = tmp_path / "builds.log"
    monkeypatch.setenv("STAND_IN_LOG", str(log))
    monkeypatch.setenv("STAND_IN_SECONDS", "0.2")
    for attr in ("_compile", "_import_library", "toolchain_problem", "find_cuda_home"):
        monkeypatch.setattr(build, attr, getattr(build, attr))  # so the test's end restores them
    exec(compile(STAND_IN, "stand_in", "exec"), {})  # replaces them
    yield tmp_path / "cache", log


def _builds(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def _build_dir(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    return d


# --- concurrent first use ----------------------------------------------------------------------

WORKER = STAND_IN + textwrap.dedent('''
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    root, barrier, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    # Start together: each says it is ready, then waits for all (imports take seconds).
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < count:
        time.sleep(0.01)
    module = build.build_extension(arch_list="9.0", build_root=root)
    print(json.dumps({"pid": os.getpid(), "file": module.__file__}))
''')


def _spawn(script: str, *args, env_extra=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_four_processes_at_once_build_once_and_all_load(tmp_path):
    """4 processes (as DDP ranks start) ask at the same moment: one build (the stand-in's,
    2 s), the other three wait on the lock and load its result."""
    root, barrier, log = tmp_path / "cache", tmp_path / "barrier", tmp_path / "builds.log"
    barrier.mkdir()
    env = {"STAND_IN_LOG": str(log), "STAND_IN_SECONDS": "2"}
    procs = [_spawn(WORKER, root, barrier, 4, env_extra=env) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    assert _builds(log) == 1, log.read_text()
    files = {r["file"] for r, _ in results}
    assert len(files) == 1 and Path(files.pop()).is_file()
    waited = sum("waiting for another process" in err for _, err in results)
    assert waited == 3, [err for _, err in results]
    assert not any("WARNING" in err for _, err in results)


def test_a_killed_build_leaves_no_stale_lock_and_is_rebuilt(stand_in, caplog):
    """A process killed mid-build (SIGKILL) held the lock: the next one neither waits for it
    nor trusts its half-written folder; it rebuilds with a warning."""
    root, log = stand_in
    killer_script = STAND_IN + textwrap.dedent('''
        import sys
        build.build_extension(arch_list="9.0", build_root=Path(sys.argv[1]))
    ''')
    victim = _spawn(killer_script, root, env_extra={"STAND_IN_LOG": str(log), "STAND_IN_SECONDS": "120"})
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob("*/compiling")):  # it holds the lock and is "compiling"
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the stand-in build never started"
            time.sleep(0.05)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    assert list(root.glob("*.lock")), "premise: the dead process's lock file is still there"
    (_build_dir(root) / "lock").touch()  # and torch's own lock, as a killed cpp_extension leaves it

    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=build.logger.name):
        module = build.build_extension(arch_list="9.0", build_root=root)
    assert time.monotonic() - start < 30
    assert Path(module.__file__).is_file()
    assert _builds(log) == 2  # the victim's and this one
    assert not (_build_dir(root) / "lock").exists()
    assert "no completion record" in caplog.text and "rebuilding" in caplog.text


def test_waiting_for_a_hung_build_gives_up_with_a_clear_error(stand_in, monkeypatch):
    """A live holder that never finishes: waiters raise after the timeout, naming it."""
    root, _ = stand_in
    holder = _spawn(textwrap.dedent('''
        import sys, time
        from pathlib import Path
        from danet_ops.cuda import build
        with build.build_lock(Path(sys.argv[1])):
            print("locked", flush=True)
            time.sleep(120)
    '''), root / "probe.lock")
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("DANET_OPS_BUILD_LOCK_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=rf"gave up after 1 s .*{holder.pid}"):
            with build.build_lock(root / "probe.lock"):
                pass
        assert time.monotonic() - start < 20
    finally:
        holder.kill()
        holder.wait(timeout=30)


# --- damaged caches ------------------------------------------------------------------------------


def _first_build(root: Path, log: Path) -> Path:
    build.build_extension(arch_list="9.0", build_root=root)
    assert _builds(log) == 1
    return _build_dir(root)


def test_cached_build_is_loaded_without_rebuilding(stand_in, caplog):
    root, log = stand_in
    build_dir = _first_build(root, log)
    record = json.loads((build_dir / build.RECORD).read_text())
    assert set(record) == {"library", "size", "sha256"}
    with caplog.at_level(logging.WARNING, logger=build.logger.name):
        build.build_extension(arch_list="9.0", build_root=root)
    assert _builds(log) == 1 and not caplog.records


def _truncate(library: Path) -> None:
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])


def _flip_a_byte(library: Path) -> None:
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))


def _drop_record(build_dir: Path) -> None:
    (build_dir / build.RECORD).unlink()


@pytest.mark.parametrize("damage,words", [
    (lambda d: _truncate(next(d.glob("*.so"))), "truncated"),
    (lambda d: _flip_a_byte(next(d.glob("*.so"))), "SHA-256"),
    (lambda d: next(d.glob("*.so")).unlink(), "missing"),
    (lambda d: (d / build.RECORD).write_text("{not json"), "unreadable"),
    (_drop_record, "no completion record"),  # a half-written build folder
], ids=["truncated-so", "corrupted-so", "missing-so", "garbled-record", "half-written"])
def test_damaged_cache_is_rebuilt_with_a_warning(stand_in, caplog, damage, words):
    root, log = stand_in
    build_dir = _first_build(root, log)
    damage(build_dir)
    with caplog.at_level(logging.WARNING, logger=build.logger.name):
        module = build.build_extension(arch_list="9.0", build_root=root)
    assert _builds(log) == 2
    assert words in caplog.text and "rebuilding" in caplog.text
    assert build.cached_library(build_dir)[0] == Path(module.__file__)


def test_library_that_fails_to_import_is_rebuilt(stand_in, caplog, monkeypatch):
    """Intact by its record, but dlopen refuses it (say, a torch upgraded under it)."""
    root, log = stand_in
    _first_build(root, log)
    real_import = build._import_library
    calls = []

    def refuse_once(path, name):
        calls.append(path)
        if len(calls) == 1:
            raise ImportError("undefined symbol: _ZN3c10 (stand-in)")
        return real_import(path, name)

    monkeypatch.setattr(build, "_import_library", refuse_once)
    with caplog.at_level(logging.WARNING, logger=build.logger.name):
        build.build_extension(arch_list="9.0", build_root=root)
    assert _builds(log) == 2
    assert "does not import" in caplog.text and "undefined symbol" in caplog.text
