"""Docker backend: the same :class:`~mx_envs.sandbox.api.Sandbox` API, one container per run.

Needs the ``docker`` extra (``pip install metaagentx[docker]``) and a reachable Docker daemon.
Each run: ``network_mode="none"``, memory (= memory_mb, no extra swap), pids and CPU limits,
read-only root file system, a size-limited tmpfs at ``/work`` (the working dir) and ``/tmp``, all
capabilities dropped, ``no-new-privileges``, uid 65534. The program is passed as a tar archive.

``start`` (a host channel) is not offered by this backend: the MAS runtime uses the process
backend for scripts. Unverified on the machines this project was built on (no Docker daemon).
"""

from __future__ import annotations

import io
import tarfile
import time
from typing import Any

from mx_envs.sandbox.api import Limits, RunResult, Verdict

DEFAULT_IMAGE = "python:3.11-slim"
_RUNNER = (
    "import sys,os\n"
    "os.chdir('/work')\n"
    "sys.argv=['/work/main.py']\n"
    "src=open('/work/main.py',encoding='utf-8').read()\n"
    "sys.stdin=open('/work/.stdin',encoding='utf-8',errors='surrogateescape')\n"
    "exec(compile(src,'/work/main.py','exec'),{'__name__':'__main__','__file__':'/work/main.py'})\n"
)


class DockerUnavailable(RuntimeError):
    """The docker SDK is not installed or no Docker daemon answers."""


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.uid = info.gid = 65534
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class DockerSandbox:
    """Runs each program in a fresh, network-less, read-only container."""

    name = "docker"

    def __init__(self, image: str = DEFAULT_IMAGE, client: Any = None, pull: bool = False) -> None:
        try:
            import docker  # the `docker` extra
        except ImportError as exc:
            raise DockerUnavailable("the docker SDK is not installed (pip install metaagentx[docker])") from exc
        try:
            self.client = client or docker.from_env()
            self.client.ping()
        except Exception as exc:  # noqa: BLE001 - any connection failure means "no daemon"
            raise DockerUnavailable(f"no Docker daemon reachable: {exc}") from exc
        self.image = image
        if pull:
            self.client.images.pull(image)

    def container_kwargs(self, limits: Limits) -> dict[str, Any]:
        """The container options that enforce ``limits`` (public so tests can check them)."""
        mem = f"{int(limits.memory_mb)}m"
        tmpfs_size = max(16, 4 * int(limits.file_size_mb))
        return {
            "image": self.image,
            "command": ["python", "-I", "-c", _RUNNER],
            "network_mode": "bridge" if limits.network else "none",
            "mem_limit": mem,
            "memswap_limit": mem,
            "pids_limit": int(limits.max_processes),
            "nano_cpus": int(1e9),
            "read_only": True,
            "tmpfs": {
                "/work": f"rw,size={tmpfs_size}m,uid=65534,gid=65534,mode=0700",
                "/tmp": f"rw,size={tmpfs_size}m,mode=1777",
            },
            "working_dir": "/work",
            "user": "65534:65534",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "ulimits": [
                {"name": "cpu", "soft": int(limits.effective_cpu_s()), "hard": int(limits.effective_cpu_s()) + 1},
                {"name": "fsize", "soft": limits.file_size_mb << 20, "hard": limits.file_size_mb << 20},
                {"name": "nofile", "soft": limits.open_files, "hard": limits.open_files},
                {"name": "core", "soft": 0, "hard": 0},
            ],
            "environment": {"PYTHONIOENCODING": "utf-8", "HOME": "/work", "LANG": "C.UTF-8"},
            "detach": True,
        }

    def run(
        self,
        source: str,
        stdin: str | bytes = "",
        limits: Limits | None = None,
        files: dict[str, str | bytes] | None = None,
    ) -> RunResult:
        from docker.types import Ulimit

        limits = limits or Limits()
        kwargs = self.container_kwargs(limits)
        kwargs["ulimits"] = [Ulimit(**u) for u in kwargs["ulimits"]]
        stdin_b = stdin.encode("utf-8", errors="surrogateescape") if isinstance(stdin, str) else bytes(stdin)
        blobs = {k: (v.encode() if isinstance(v, str) else bytes(v)) for k, v in (files or {}).items()}
        blobs["main.py"] = source.encode()
        blobs[".stdin"] = stdin_b
        t0 = time.monotonic()
        container = None
        try:
            container = self.client.containers.create(**kwargs)
            container.put_archive("/work", _tar(blobs))
            container.start()
            timed_out = False
            try:
                status = container.wait(timeout=limits.wall_s)
            except Exception:  # noqa: BLE001 - requests' ReadTimeout: the wall limit
                timed_out = True
                container.kill()
                status = container.wait(timeout=10)
            wall = time.monotonic() - t0
            out = container.logs(stdout=True, stderr=False)
            err = container.logs(stdout=False, stderr=True)
            container.reload()
            state = container.attrs.get("State", {})
        except Exception as exc:  # noqa: BLE001 - a daemon failure is the sandbox's failure
            return RunResult(verdict=Verdict.SANDBOX_ERROR, exit_code=None, message=f"docker: {exc}")
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except Exception:  # noqa: BLE001
                    pass
        code = int(status.get("StatusCode", -1))
        cap = limits.output_bytes
        out_t, err_t = len(out) > cap, len(err) > cap
        result = RunResult(
            verdict=Verdict.OK,
            exit_code=code if code < 128 else None,
            stdout=out[:cap].decode("utf-8", errors="replace"),
            stderr=err[:cap].decode("utf-8", errors="replace"),
            stdout_truncated=out_t,
            stderr_truncated=err_t,
            wall_s=wall,
            signal=code - 128 if code > 128 else None,
            isolation={"backend": "docker", "image": self.image, "network": kwargs["network_mode"]},
        )
        if timed_out:
            result.verdict, result.message = Verdict.TIMEOUT, f"wall-clock limit of {limits.wall_s:g} s reached"
        elif out_t or err_t:
            result.verdict, result.message = Verdict.OUTPUT_EXCEEDED, "output over the cap"
        elif state.get("OOMKilled") or "MemoryError" in result.stderr[-2000:]:
            result.verdict, result.message = Verdict.MEMORY_EXCEEDED, "container memory limit reached"
        elif result.signal is not None:
            result.verdict, result.message = Verdict.KILLED, f"terminated by signal {result.signal}"
        elif code != 0:
            result.verdict, result.message = Verdict.RUNTIME_ERROR, f"exit status {code}"
        return result

    def start(self, source: str, limits: Limits | None = None, files: dict[str, str | bytes] | None = None) -> Any:
        raise NotImplementedError("DockerSandbox has no host channel; use the process backend for start()")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
