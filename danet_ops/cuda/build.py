"""Building (or finding) the CUDA extension compiled from ``csrc/``.

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` and ninja,
into a cache directory keyed by a hash of everything that changes the binary: the source
files, the torch and CUDA versions, nvcc's path and the GPU architectures. A prebuilt
``danet_ops._C`` (``DANET_OPS_BUILD_CUDA=1 pip install --no-build-isolation .``) is used
instead when it imports.

Cache location: ``$DANET_OPS_CACHE``, else ``$XDG_CACHE_HOME/danet_ops``, else
``~/.cache/danet_ops``; one subdirectory per hash.

Several processes may ask at once (DDP ranks starting together): one builds while the
others wait on a file lock (``<hash>.lock`` beside the build directory), then they load
what it built. A build is trusted only once its record (``danet_ops_build.json``: the
library's name, size and SHA-256) has been written after it; a build directory without one
(an interrupted build), with a library that differs from the record (truncated, modified)
or that fails to import is rebuilt from scratch, with a logged warning.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import site
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from danet_ops.backends import BackendUnavailableError

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent first builds are not serialised there
    fcntl = None

logger = logging.getLogger(__name__)

SOURCES = ("bindings.cpp", "pam.cu", "cam.cu")
HEADERS = ("common.cuh", "tile.cuh", "mma.cuh", "pam_kernels.cuh", "cam_kernels.cuh")
DEFAULT_ARCH_LIST = "8.0;9.0"
# -O3 but no --use_fast_math: exp/log stay IEEE-accurate (the fp32 softmax relies on it)
# and no flush-to-zero. -lineinfo lets compute-sanitizer and profilers map to source lines.
NVCC_FLAGS = ("-O3", "-lineinfo")
CXX_FLAGS = ("-O3",)
# Written into the build directory last, once the library built and imported.
RECORD = "danet_ops_build.json"
# How long a process waits for another one's build before giving up (seconds); a build
# takes a few minutes at most. $DANET_OPS_BUILD_LOCK_TIMEOUT overrides it.
LOCK_TIMEOUT_S = 1800.0


def source_dir() -> Path:
    """The CUDA sources: the installed package's ``danet_ops/csrc`` or the checkout's ``csrc/``."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if all((candidate / name).is_file() for name in SOURCES):
            return candidate
    raise BackendUnavailableError(
        f"the CUDA sources were not found (looked in {package / 'csrc'} and "
        f"{package.parent / 'csrc'}); reinstall danet_ops"
    )


def _is_toolkit(home: Optional[str]) -> bool:
    # A toolkit root has the compiler and the runtime headers (a bare nvcc wrapper script
    # in /usr/local/bin does not make /usr/local one).
    return bool(home) and (Path(home) / "bin" / "nvcc").is_file() and (
        Path(home) / "include" / "cuda_runtime.h").is_file()


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit root: $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda (first valid)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))  # follows symlinks
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if _is_toolkit(home):
            return str(Path(home))
    return None


def nvidia_include_dirs() -> list[str]:
    """Include dirs of pip's nvidia-* CUDA packages (``site-packages/nvidia/*/include``).

    torch's headers may include CUDA library headers (cublas, cusparse) that a minimal
    toolkit lacks; the CUDA wheels that come with torch carry them.
    """
    roots = set()
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(path)
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # some virtualenvs
        pass
    roots.add(str(Path(torch.__file__).resolve().parent.parent))
    dirs = set()
    for root in roots:
        dirs.update(str(p) for p in Path(root).glob("nvidia/*/include") if p.is_dir())
    return sorted(dirs)


def _parse_arch_list(text: str) -> list[str]:
    """``"8.0;9.0+PTX"`` (or space-separated) -> ``["8.0", "9.0+PTX"]``."""
    archs = [a for a in re.split(r"[;\s,]+", text.strip()) if a]
    for arch in archs:
        if not re.fullmatch(r"\d+\.\d+a?(\+PTX)?", arch):
            raise BackendUnavailableError(
                f"cannot build the CUDA extension for arch {arch!r} (from {text!r}); give "
                f"TORCH_CUDA_ARCH_LIST as numbers like '8.0;9.0' or '9.0+PTX'"
            )
    if not archs:
        raise BackendUnavailableError("TORCH_CUDA_ARCH_LIST is empty; set it like '8.0;9.0'")
    return archs


def default_arch_list() -> str:
    """The visible GPU's compute capability, else $TORCH_CUDA_ARCH_LIST, else 8.0;9.0."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCH_LIST


def _gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        number = arch.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


def cache_root() -> Path:
    if os.environ.get("DANET_OPS_CACHE"):
        return Path(os.environ["DANET_OPS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "danet_ops"


def _build_hash(src: Path, archs: list[str], cuda_home: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(SOURCES + HEADERS):
        digest.update(name.encode())
        digest.update((src / name).read_bytes())
    for part in (torch.__version__, str(torch.version.cuda), cuda_home, str(nvcc_version(cuda_home)),
                 ";".join(archs),
                 " ".join(NVCC_FLAGS + CXX_FLAGS)):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def nvcc_version(cuda_home: str) -> Optional[str]:
    """``"13.0"`` from ``nvcc --version`` of the toolkit at ``cuda_home`` (None if unreadable)."""
    try:
        result = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--version"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", result.stdout)
    return match.group(1) if match else None


def toolchain_problem() -> Optional[str]:
    """None when this torch and machine can compile the extension, else why not and how."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of "
            f"torch (see https://pytorch.org/get-started/locally/)"
        )
    if find_cuda_home() is None:
        return (
            "the CUDA compiler nvcc was not found (looked at $CUDA_HOME, $CUDA_PATH, PATH and "
            "/usr/local/cuda); install the CUDA toolkit matching torch "
            f"(CUDA {torch.version.cuda}) and set CUDA_HOME, or install a wheel built with "
            "DANET_OPS_BUILD_CUDA=1"
        )
    home = find_cuda_home()
    found = nvcc_version(home)
    if found is not None and found.split(".")[0] != str(torch.version.cuda).split(".")[0]:
        # torch's extension builder refuses a different major CUDA version.
        return (
            f"nvcc in {home} is CUDA {found} but this torch was built with CUDA "
            f"{torch.version.cuda}; install the matching toolkit and point CUDA_HOME at it"
        )
    return None


def _import_cpp_extension(cuda_home: str) -> ModuleType:
    # cpp_extension guesses CUDA_HOME when first imported (and warns when the guess has no
    # runtime): let that first import see the toolkit found here, without leaving the
    # variable changed for the rest of the process.
    saved = os.environ.get("CUDA_HOME")
    os.environ["CUDA_HOME"] = cuda_home
    try:
        from torch.utils import cpp_extension
    finally:
        if saved is None:
            del os.environ["CUDA_HOME"]
        else:
            os.environ["CUDA_HOME"] = saved
    return cpp_extension


def _lock_timeout() -> float:
    return float(os.environ.get("DANET_OPS_BUILD_LOCK_TIMEOUT", LOCK_TIMEOUT_S))


@contextlib.contextmanager
def build_lock(path: Path, timeout: Optional[float] = None):
    """Hold an exclusive lock on ``path`` (flock) for the block: one process builds, the
    others wait here. The kernel drops a flock when its holder exits, however it dies, so a
    killed build leaves no stale lock (the file itself stays, and means nothing).
    Raises BackendUnavailableError after ``timeout`` seconds of waiting (default
    $DANET_OPS_BUILD_LOCK_TIMEOUT, else LOCK_TIMEOUT_S): a hung holder is reported, not waited on forever.
    """
    if fcntl is None:
        yield
        return
    timeout = _lock_timeout() if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline, waiting = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                if time.monotonic() > deadline:
                    raise BackendUnavailableError(
                        f"gave up after {timeout:.0f} s waiting for another process (pid, host: "
                        f"{holder}) to finish building the danet_ops CUDA extension (lock {path}); "
                        f"if that process hangs, end it and retry"
                    ) from None
                if not waiting:
                    logger.info("waiting for another process (pid, host: %s) building the danet_ops "
                                "CUDA extension (lock %s)", holder, path)
                    waiting = True
                time.sleep(0.1)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()} {socket.gethostname()}\n")  # who holds it, for waiters' messages
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_record(build_dir: Path, library: Path) -> None:
    record = {"library": library.name, "size": library.stat().st_size, "sha256": _sha256(library)}
    tmp = build_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, build_dir / RECORD)  # atomic: a record is whole or absent


def cached_library(build_dir: Path) -> tuple[Optional[Path], Optional[str]]:
    """(library, None) for a complete build whose library matches its record; (None, None)
    for no build at all; (None, what is wrong) for a damaged one."""
    if not build_dir.is_dir() or not any(build_dir.iterdir()):
        return None, None
    try:
        record = json.loads((build_dir / RECORD).read_text())
        library = build_dir / record["library"]
        size, sha = int(record["size"]), str(record["sha256"])
    except FileNotFoundError:
        return None, "it has no completion record (an interrupted build, or one by an older danet_ops)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"its completion record is unreadable ({exc})"
    if not library.is_file():
        return None, f"its library {library.name} is missing"
    if library.stat().st_size != size:
        return None, (f"its library {library.name} has {library.stat().st_size} bytes, "
                      f"not the {size} built (truncated?)")
    if _sha256(library) != sha:
        return None, f"its library {library.name} differs from the one built (SHA-256 mismatch)"
    return library, None


def _import_library(path: Path, name: str) -> ModuleType:
    """Import the built extension module from its file (no compiler, no ninja)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an importable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(build_dir: Path, name: str, src: Path, archs: list[str], cuda_home: str,
             verbose: bool) -> ModuleType:
    """Compile csrc/ into ``build_dir`` (cpp_extension + ninja) and import the result."""
    cpp_extension = _import_cpp_extension(cuda_home)
    # cpp_extension resolves CUDA_HOME once, at import, and may have guessed another
    # toolkit (or none); point it at the one found here for this build only.
    previous_home = cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = cuda_home
    include_dirs = []
    if not (Path(cuda_home) / "include" / "cublas_v2.h").is_file():
        include_dirs = nvidia_include_dirs()
    try:
        # Explicit -gencode flags: cpp_extension then adds no arch flags of its own, so it
        # never needs a GPU (or TORCH_CUDA_ARCH_LIST) to pick one.
        return cpp_extension.load(
            name=name,
            sources=[str(src / source) for source in SOURCES],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=list(NVCC_FLAGS) + _gencode_flags(archs),
            extra_include_paths=[str(src)] + include_dirs,
            build_directory=str(build_dir),
            with_cuda=True,
            verbose=verbose,
        )
    finally:
        cpp_extension.CUDA_HOME = previous_home


def _build_dir(src: Path, archs: list[str], cuda_home: str, build_root: Optional[os.PathLike]) -> Path:
    return Path(build_root or cache_root()) / _build_hash(src, archs, cuda_home)


def state() -> str:
    """Where the extension stands, in a sentence (for ``python -m danet_ops``): prebuilt,
    loaded, built and cached, not built yet (and where the first use will build it), or why
    it cannot be built."""
    if prebuilt() is not None:
        return "prebuilt (danet_ops._C)"
    if load.cache_info().currsize:
        return f"loaded from {Path(load().__file__).parent}"
    problem = toolchain_problem()
    if problem is not None:
        return f"cannot be built here: {problem}"
    archs = _parse_arch_list(default_arch_list())
    build_dir = _build_dir(source_dir(), archs, find_cuda_home(), None)
    if cached_library(build_dir)[0] is not None:
        return f"built for arch {';'.join(archs)}, cached in {build_dir}"
    return f"not built yet: the first cuda call compiles it for arch {';'.join(archs)} into {build_dir}"


def build_extension(arch_list: Optional[str] = None, verbose: bool = False,
                    build_root: Optional[os.PathLike] = None) -> ModuleType:
    """Compile (or reuse the cached build of) the extension and return the loaded module.

    Args:
        arch_list: GPU architectures like ``"9.0"`` or ``"8.0;9.0+PTX"``; default: the visible
            GPU's, else ``$TORCH_CUDA_ARCH_LIST``, else ``8.0;9.0``.
        verbose: show the compiler's commands and output.
        build_root: where the per-hash build directories go (default: ``cache_root()``).

    Safe to call from several processes at once (one builds, the others wait and load);
    a damaged cached build is rebuilt with a logged warning.

    Raises:
        BackendUnavailableError: no CUDA build of torch, no nvcc, the build failed, or
            another process's build did not finish in time.
    """
    problem = toolchain_problem()
    if problem is not None:
        raise BackendUnavailableError(f"cannot build the danet_ops CUDA extension: {problem}")
    cuda_home = find_cuda_home()
    archs = _parse_arch_list(arch_list or default_arch_list())
    src = source_dir()
    build_dir = _build_dir(src, archs, cuda_home, build_root)
    name = f"danet_ops_cuda_{build_dir.name}"

    with build_lock(build_dir.parent / f"{build_dir.name}.lock"):
        library, damage = cached_library(build_dir)
        if library is not None:
            try:
                return _import_library(library, name)
            except (ImportError, OSError) as exc:
                damage = f"its library {library.name} does not import ({exc})"
        if damage is not None:
            logger.warning("the cached danet_ops CUDA extension in %s is damaged: %s; rebuilding it",
                           build_dir, damage)
            # Everything goes, torch's own 'lock' file included: a stale one (left by a
            # killed build) would make cpp_extension wait for it forever.
            shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True, exist_ok=True)
        logger.info("building the danet_ops CUDA extension (first use, about a minute)... "
                    "[arch %s, cache %s]", ";".join(archs), build_dir)
        try:
            module = _compile(build_dir, name, src, archs, cuda_home, verbose)
        except (RuntimeError, OSError, ImportError, SystemExit) as exc:
            raise BackendUnavailableError(
                f"building the danet_ops CUDA extension failed in {build_dir}: {exc} "
                f"(rerun danet_ops.cuda.build.build_extension(verbose=True) for the compiler output)"
            ) from exc
        _write_record(build_dir, Path(module.__file__))
        return module


@functools.lru_cache(maxsize=None)
def prebuilt() -> Optional[ModuleType]:
    """The ahead-of-time built ``danet_ops._C``, if this install has one."""
    try:
        from danet_ops import _C  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _C


@functools.lru_cache(maxsize=None)
def load() -> ModuleType:
    """The extension module: the prebuilt one, else built (once per process) from csrc/."""
    module = prebuilt()
    if module is not None:
        return module
    return build_extension()
