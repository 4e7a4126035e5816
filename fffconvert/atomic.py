"""Output folders that are either complete or absent, whatever kills the process.

A folder is written under a hidden temporary name beside the target, marked complete, and only
then swapped in: the old folder (with --overwrite) is renamed aside, the new one renamed in, the
old one removed. A later run first recovers what a killed one left: it finishes a swap whose new
folder was complete, puts back an old folder whose swap never finished, and removes temporaries
of processes that are gone.
"""
import os
import shutil
from pathlib import Path

from .errors import UserError

COMPLETE = ".fffconvert-complete"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _leftovers(path: Path, kind: str):
    """(folder, pid) of this target's temporaries of `kind` ("tmp" or "old") whose process is gone."""
    for p in path.parent.glob(f".{path.name}.{kind}-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            yield p


def recover(path) -> None:
    """Repair what a killed save left beside `path` (see the module's docstring)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for tmp in _leftovers(path, "tmp"):
        if not path.exists() and (tmp / COMPLETE).exists():
            (tmp / COMPLETE).unlink()
            tmp.rename(path)  # the swap had put the old folder aside: finish it
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for old in _leftovers(path, "old"):
        if not path.exists():
            old.rename(path)  # the new folder never arrived: the old one comes back
        else:
            shutil.rmtree(old, ignore_errors=True)


def write_text(path, text: str) -> None:
    """Write a file whole or not at all: under a hidden name beside it, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def check_writable(path) -> None:
    """Raise UserError unless a folder could be created at `path` (checked before any work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} exists and is a file, not a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create output folder {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create output folder {path}: {parent} is not writable")


class atomic_folder:
    """Context manager yielding a temporary folder that becomes `path` when the block succeeds."""

    def __init__(self, path, overwrite=False):
        self.path = Path(path)
        recover(self.path)
        if self.path.exists() and not overwrite:
            raise UserError(f"output folder {self.path} exists; pass --overwrite to replace it")
        check_writable(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        (self.tmp / COMPLETE).touch()
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            self.path.rename(old)
        self.tmp.rename(self.path)
        (self.path / COMPLETE).unlink()
        shutil.rmtree(old, ignore_errors=True)
        return False
