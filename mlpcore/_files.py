"""Writing files atomically: a reader sees the old file or the complete new one, never a partial one.
Used by _model_files and the command (atomic_write), and by datasets's download (current_umask)."""
import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path


# A temporary file this old is stale whatever its writer's process id says (on a shared file system the
# id may be another machine's).
_STALE_SECONDS = 24 * 3600
# This host in temporary files' names: a process id means something only on the host that wrote it.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
#: Deflate compresses at most about 1032:1: a compressed stream of n bytes holds at most this many times n
#: (model files and IDX files are bounded by it before anything is allocated).
DEFLATE_MAX_RATIO = 1100


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success it replaces `path` in one rename.

    The temporary file is named .NAME.HOST.PID.RANDOM.tmp (HOST a hash of the host name). A writer killed
    midway (kill -9, a power cut) leaves its file behind; the next write to `path` removes those this
    host's processes left and no longer run, and any older than a day (another host's, on a shared file
    system, whose process cannot be asked about)."""
    path = Path(path)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
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
    """Remove atomic_write's temporary files for `path` that their writers left: exactly its naming, of
    this host and a process that no longer runs, or older than a day."""
    ours = re.compile(rf"\.{re.escape(path.name)}\.([0-9a-f]{{8}})\.(\d+)\.[a-z0-9_]{{8}}\.tmp")
    try:
        candidates = [(entry, ours.fullmatch(entry.name)) for entry in os.scandir(path.parent)]
    except OSError:
        return
    for entry, match in candidates:
        if match is None:
            continue
        try:
            here = match.group(1) == _HOST
            stale = ((here and not _process_exists(int(match.group(2))))
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
    except (OSError, OverflowError):
        return True  # someone else's process (PermissionError), or an id we cannot ask about: keep its file
    return True
