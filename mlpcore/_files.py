"""Writing files atomically: a reader sees the old file or the complete new one, never a partial one.
Used by _model_files and the command (atomic_write), and by datasets's download (current_umask)."""
import contextlib
import os
import tempfile
import time
from pathlib import Path


# A temporary file this old is stale whatever its writer's process id says (on a shared file system the
# id may be another machine's).
_STALE_SECONDS = 24 * 3600


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success it replaces `path` in one rename.

    The temporary file is named .NAME.PID.RANDOM.tmp. A writer killed midway (kill -9, a power cut)
    leaves its file behind; the next write to `path` removes those whose process is gone."""
    path = Path(path)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file readable by its owner only; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(path):
    """Remove atomic_write's temporary files for `path` left by processes that no longer run."""
    prefix = f".{path.name}."
    try:
        candidates = [entry for entry in os.scandir(path.parent)
                      if entry.name.startswith(prefix) and entry.name.endswith(".tmp")]
    except OSError:
        return
    for entry in candidates:
        pid = entry.name[len(prefix):].split(".", 1)[0]
        try:
            stale = (not pid.isdigit() or not _process_exists(int(pid))
                     or time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_SECONDS)
            if stale and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        except OSError:
            pass  # gone already, or not ours to remove


def _process_exists(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or an id we cannot ask about): leave its file
    return True
