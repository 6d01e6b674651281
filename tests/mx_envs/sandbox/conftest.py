from __future__ import annotations

import os

import pytest

SECRET_VAR = "MX_TEST_FAKE_SECRET_TOKEN"
SECRET_VALUE = "sk-test-do-not-leak-4242"


PF_EXITING = 0x4  # task flag: the process is in do_exit and never returns to user space


def _dying(pid: str) -> bool:
    """Whether ``pid`` is a zombie or already inside the kernel's exit path (SIGKILLed or exiting).

    The sandbox reports a run once all its processes are dead *or dying*; the supervisor reaps the
    exiting leader right after sending the result, so such a process may still be listed briefly.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & PF_EXITING)


def uid_processes(uid: int | None) -> list[int]:
    """Live processes whose real uid is ``uid`` and that can still run (not dying; see _dying)."""
    if uid is None:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid and not _dying(name):
                            out.append(int(name))
                        break
        except OSError:
            continue
    return out


def survivors(uid: int | None, settle_s: float = 1.5) -> list[int]:
    """Processes of a finished run still alive after ``settle_s``.

    The result of a run that exits by itself is reported right after the supervisor SIGKILLs the
    group, so for a few milliseconds a killed process may not yet be in the exit path; a real survivor
    (an escaped daemon) is still there when the settle time is over.
    """
    import time

    deadline = time.monotonic() + settle_s
    while True:
        left = uid_processes(uid)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


@pytest.fixture(scope="session")
def secret_env() -> tuple[str, str]:
    """Name and value of a fake secret put into the test process environment."""
    return SECRET_VAR, SECRET_VALUE


@pytest.fixture(scope="session")
def leftover_processes():
    """``f(uid) -> [pid]``: processes of a finished run that are still alive (must be none)."""
    return survivors


@pytest.fixture(scope="session")
def sandbox():
    from mx_envs.sandbox import ProcessSandbox

    os.environ[SECRET_VAR] = SECRET_VALUE  # set before the pool starts: must not reach runs
    sb = ProcessSandbox(pool_size=2)
    sb.warm_up()
    yield sb
    sb.close()
    os.environ.pop(SECRET_VAR, None)
