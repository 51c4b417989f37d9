"""Small shared helpers: user-facing errors, atomic writes, logging, hashing, code version."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from loguru import logger

from models.errors import UserError  # re-exported: the one user-facing error class

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_main(main: Callable[[], int]) -> None:
    """Call an entry point's main(); turn UserError into a one-line message and exit code 2. The message
    has argparse's prefix ("predict.py: error: ..."), so that a bad flag and a bad input read alike."""
    try:
        sys.exit(main())
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a directory's entries, to the disk (open by path, fsync, close)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if os.name == "nt" and os.path.isdir(path):
            return  # Windows cannot open a directory; NTFS journals the rename itself
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system without fsync for directories
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file, and the new file
    survives a power loss as well as a kill. The temporary file is fsynced before ``os.replace`` (else the
    rename can reach the disk before the data, leaving an empty or truncated file after a crash), and the
    directory after it (the rename is a change of the directory, lost with the page cache if not flushed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)  # by path (torch.save, savefig...): the writer's own handle is closed when it returns
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """Git commit of the code (with '-dirty' if modified), or the package version."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
            return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from stylecap import __version__
    return __version__


def setup_logging(log_file: str | os.PathLike | None = None, quiet: bool = False) -> None:
    """The one logging setup: loguru to stderr (INFO) and, optionally, to a file (DEBUG)."""
    logger.remove()
    if not quiet:
        logger.add(sys.stderr, level="INFO", format="<green>{time:HH:mm:ss}</green> | {level: <7} | {message}")
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        logger.add(str(log_file), level="DEBUG", enqueue=False)


def resolve_device(name: str | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu. Never hard-codes cuda:0."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available; use --device cpu")
    return dev
