from __future__ import annotations

import os

import pytest

SECRET_VAR = "MX_TEST_FAKE_SECRET_TOKEN"
SECRET_VALUE = "sk-test-do-not-leak-4242"


def uid_processes(uid: int | None) -> list[int]:
    """Live processes whose real uid is ``uid`` (read from /proc/PID/status)."""
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
                        if int(line.split()[1]) == uid:
                            out.append(int(name))
                        break
        except OSError:
            continue
    return out


@pytest.fixture(scope="session")
def secret_env() -> tuple[str, str]:
    """Name and value of a fake secret put into the test process environment."""
    return SECRET_VAR, SECRET_VALUE


@pytest.fixture(scope="session")
def leftover_processes():
    """``f(uid) -> [pid]``: processes of a finished run that are still alive (must be none)."""
    return uid_processes


@pytest.fixture(scope="session")
def sandbox():
    from mx_envs.sandbox import ProcessSandbox

    os.environ[SECRET_VAR] = SECRET_VALUE  # set before the pool starts: must not reach runs
    sb = ProcessSandbox(pool_size=2)
    sb.warm_up()
    yield sb
    sb.close()
    os.environ.pop(SECRET_VAR, None)
