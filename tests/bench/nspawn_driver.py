"""A Debian container booted with systemd-nspawn, driven like a NixOS test machine.

The scenarios in vm-tests/scenarios/ are written against the NixOS test driver's
vocabulary (`machine.succeed`, `wait_until_succeeds`, `wait_for_unit`, `subtest` ...),
so the same code runs in a NixOS VM and here, on a real systemd in a container. This
module provides that vocabulary for a container:

  * start() copies the cached root (tests/bench/rootfs.sh) into a per-run directory,
    boots it with `systemd-nspawn --boot`, finds the container's PID 1 (the child of the
    nspawn process that lives in a new PID namespace) and waits until
    `systemctl is-system-running` says running or degraded;
  * every command runs as `bash -c CMD` inside all of the container's namespaces through
    `nsenter -t <PID 1> -a`, with a clean environment;
  * shutdown() powers the container off (SIGTERM to nspawn asks its init to shut down),
    kills what is left, and removes the run directory. A machine that is not persistent
    is shut down on interpreter exit and on SIGINT/SIGTERM/SIGHUP, even after a failure.

A persistent machine (the lab) outlives the process that started it: its nspawn and
init PIDs are kept in <run_dir>/machine.json and Machine.attach(run_dir) finds it again.

Only the standard library is used; needs root, systemd-nspawn and nsenter on the host.
The host's PID 1 may be systemd or not: without systemd on the host, nspawn is told to
stay in the cgroup it was started in (--keep-unit); with it, nspawn asks the host's
systemd for a scope of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

CACHE_DIR = Path(os.environ.get("MSP_BENCH_CACHE", "/var/tmp/msp-agent-bench"))
HERE = Path(__file__).resolve().parent

# Small file systems given to every container from the host side (there are no loop
# devices inside), for the disk scenarios to watch and fill: /srv/data is the mount
# the agent may free, /srv/archive one it must only watch.
DISK_TMPFS = ("/srv/data:mode=0755,size=64m", "/srv/archive:mode=0755,size=16m")

# The environment of every command inside: nothing leaks in from the host's shell.
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class CommandFailed(Exception):
    """A command inside the machine ended with an unexpected exit status."""

    def __init__(self, command: str, status: int, stdout: str, stderr: str):
        self.command = command
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr.strip() or stdout.strip())[-2000:]
        super().__init__(f"command `{command}` exited with {status}" + (f":\n{detail}" if detail else ""))


class MachineError(Exception):
    """The container could not be booted, reached, or stopped."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def subtest(name: str) -> Iterator[None]:
    """Like the NixOS driver's subtest: announce, time, and report a named step."""
    log(f"subtest: {name}")
    start = time.monotonic()
    try:
        yield
    except BaseException:
        log(f"subtest: {name}: failed after {time.monotonic() - start:.1f} s")
        raise
    log(f"subtest: {name}: ok ({time.monotonic() - start:.1f} s)")


def build_rootfs() -> Path:
    """Run rootfs.sh (builds the root once, then only prints the cached path)."""
    out = subprocess.run([str(HERE / "rootfs.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def host_has_systemd() -> bool:
    return os.path.isdir("/run/systemd/system")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the fields after the
        # last ')' are fixed.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


class Machine:
    """One container. Construct, start(), run commands, shutdown()."""

    def __init__(
        self,
        name: str = "msp-bench",
        root: Optional[Path] = None,
        run_dir: Optional[Path] = None,
        tmpfs: Sequence[str] = DISK_TMPFS,
        nspawn_args: Sequence[str] = (),
        persistent: bool = False,
        boot_timeout: float = 90,
    ):
        self.name = name
        self.root = root
        self.run_dir = Path(run_dir) if run_dir else CACHE_DIR / "runs" / f"{name}-{os.getpid()}"
        self.tmpfs = list(tmpfs)
        self.nspawn_args = list(nspawn_args)
        self.persistent = persistent
        self.boot_timeout = boot_timeout
        self.nspawn_pid: Optional[int] = None
        self.init_pid: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._cleanup_registered = False

    # -- life cycle ------------------------------------------------------------------

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def root_dir(self) -> Path:
        return self.run_dir / "root"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "machine.json"

    @classmethod
    def attach(cls, run_dir: Path, name: str = "msp-lab") -> "Machine":
        """Find a persistent machine started earlier, by its run directory."""
        m = cls(name=name, run_dir=run_dir, persistent=True)
        try:
            state = json.loads(m.state_file.read_text())
        except (OSError, ValueError) as e:
            raise MachineError(f"no running machine recorded in {m.state_file}: {e}") from e
        m.name = state["name"]
        m.nspawn_pid = state["nspawn_pid"]
        m.init_pid = state["init_pid"]
        if not m.is_up():
            raise MachineError(f"machine {m.name} recorded in {m.state_file} is not running")
        return m

    def is_up(self) -> bool:
        return _alive(self.nspawn_pid) and _alive(self.init_pid)

    def start(self) -> None:
        if self.is_up():
            return
        if self.root is None:
            self.root = build_rootfs()
        if not self.persistent:
            self._register_cleanup()
            self.reap_stale_runs()
        t0 = time.monotonic()
        if self.root_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_state()  # the owner first, so a run killed while copying is found stale
        # A private copy per run: the cached root is never written to. --reflink makes
        # this instant where the file system can share blocks.
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.root), str(self.root_dir)], check=True)
        t_copy = time.monotonic() - t0

        cmd = [
            "systemd-nspawn", "-q",
            "-D", str(self.root_dir),
            "-M", self.name,
            "--boot",
            "--register=no",
            "--console=read-only",
        ]
        if not host_has_systemd():
            # No systemd on the host to ask for a scope: stay where we were started.
            cmd.append("--keep-unit")
        for t in self.tmpfs:
            cmd.append(f"--tmpfs={t}")
        cmd += self.nspawn_args

        console = open(self.console_log, "ab")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed with the terminal that started the lab
        )
        console.close()
        self.nspawn_pid = self._proc.pid
        try:
            self.init_pid = self._find_init()
            self._write_state()
            self._wait_booted()
        except BaseException:
            self._dump_console()
            raise
        log(f"{self.name}: up in {time.monotonic() - t0:.1f} s (copy {t_copy:.1f} s), init PID {self.init_pid}")

    def _register_cleanup(self) -> None:
        if self._cleanup_registered:
            return
        self._cleanup_registered = True
        atexit.register(self.shutdown)

        def on_signal(signum, _frame):
            # SystemExit runs the atexit handlers, and with them shutdown().
            raise SystemExit(128 + signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, on_signal)

    def _write_state(self) -> None:
        self.state_file.write_text(json.dumps(
            {"name": self.name, "nspawn_pid": self.nspawn_pid, "init_pid": self.init_pid,
             "owner_pid": None if self.persistent else os.getpid()}))

    @staticmethod
    def reap_stale_runs(runs_dir: Path = CACHE_DIR / "runs") -> None:
        """Remove containers of bench runs whose process died without cleaning up (SIGKILL)."""
        if not runs_dir.is_dir():
            return
        own_ns = os.readlink("/proc/self/ns/pid")
        for run in runs_dir.iterdir():
            try:
                state = json.loads((run / "machine.json").read_text())
            except (OSError, ValueError):
                state = {}
            owner = state.get("owner_pid")
            if owner is None and state:
                continue  # persistent: not ours to remove
            if owner and _alive(owner):
                continue
            if not state and time.time() - run.stat().st_mtime < 600:
                continue  # maybe a run still booting
            init = state.get("init_pid")
            # Only a PID that still is a container's init: PIDs are reused.
            with contextlib.suppress(OSError):
                if (_alive(init) and os.readlink(f"/proc/{init}/ns/pid") != own_ns
                        and Path(f"/proc/{init}/comm").read_text().strip() in ("systemd", "init")):
                    os.kill(init, signal.SIGKILL)
                    time.sleep(0.5)
            log(f"removing stale bench run {run}")
            subprocess.run(["rm", "-rf", "--one-file-system", str(run)], check=False)

    def _find_init(self) -> int:
        """The container's PID 1 is the nspawn child in a new PID namespace running systemd."""
        own_ns = os.readlink(f"/proc/{self.nspawn_pid}/ns/pid")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise MachineError(f"systemd-nspawn exited with {self._proc.returncode} before booting")
            for child in _children(self.nspawn_pid):
                try:
                    ns = os.readlink(f"/proc/{child}/ns/pid")
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                except OSError:
                    continue
                if ns != own_ns and comm in ("systemd", "init"):
                    return child
            time.sleep(0.05)
        raise MachineError("no init process appeared under systemd-nspawn within 30 s")

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise MachineError(f"systemd-nspawn exited with {self._proc.returncode} during boot")
            try:
                _, state = self.execute("systemctl is-system-running", timeout=10)
            except (CommandFailed, subprocess.TimeoutExpired, OSError):
                state = ""
            state = state.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    _, failed = self.execute("systemctl --failed --no-legend --plain")
                    log(f"{self.name}: booted degraded; failed units:\n{failed.rstrip()}")
                return
            time.sleep(0.1)
        raise MachineError(f"{self.name} did not finish booting in {self.boot_timeout:.0f} s (last state: {state or 'unreachable'})")

    def _dump_console(self, lines: int = 40) -> None:
        with contextlib.suppress(OSError):
            tail = self.console_log.read_text(errors="replace").splitlines()[-lines:]
            log(f"--- last lines of {self.console_log} ---\n" + "\n".join(tail))

    def shutdown(self, timeout: float = 15) -> None:
        """Power off cleanly if possible, kill otherwise, and remove the run directory."""
        if self.nspawn_pid is None and not self.run_dir.exists():
            return
        if _alive(self.nspawn_pid):
            # nspawn forwards SIGTERM to a booted container's init as a power-off request.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.nspawn_pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(self.nspawn_pid) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.1)
        # Killing the container's PID 1 kills every process of its PID namespace.
        for pid in (self.init_pid, self.nspawn_pid):
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (_alive(self.nspawn_pid) or _alive(self.init_pid)) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._reap()
        self.nspawn_pid = self.init_pid = None
        if self.run_dir.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.run_dir)], check=False)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()

    def crash(self) -> None:
        for pid in (self.init_pid, self.nspawn_pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    # -- commands --------------------------------------------------------------------

    def _nsenter(self, argv: Sequence[str]) -> list[str]:
        if not self.init_pid:
            raise MachineError(f"{self.name} is not running")
        env = [f"{k}={v}" for k, v in INSIDE_ENV.items()]
        return ["nsenter", "-t", str(self.init_pid), "-a", "/usr/bin/env", "-i", *env, *argv]

    def interactive_argv(self, argv: Sequence[str]) -> list[str]:
        """An nsenter command line for a program that uses the caller's terminal."""
        cmd = self._nsenter(argv)
        term = os.environ.get("TERM", "dumb")
        return [a if a != "TERM=dumb" else f"TERM={term}" for a in cmd]

    def run(self, command: str, timeout: Optional[float] = 900, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        """Run `bash -c command` inside; returns the CompletedProcess (bytes)."""
        return subprocess.run(
            self._nsenter(["bash", "-c", command]),
            input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def execute(self, command: str, timeout: Optional[float] = 900) -> tuple[int, str]:
        """(exit status, stdout). Stderr is not part of the output, as in the NixOS driver."""
        p = self.run(command, timeout=timeout)
        self._last_stderr = p.stderr.decode(errors="replace")
        return p.returncode, p.stdout.decode(errors="replace")

    def succeed(self, *commands: str, timeout: Optional[float] = 900) -> str:
        """Run each command; raise CommandFailed on a non-zero exit; return the stdout."""
        output = ""
        for command in commands:
            p = self.run(command, timeout=timeout)
            out = p.stdout.decode(errors="replace")
            if p.returncode != 0:
                raise CommandFailed(command, p.returncode, out, p.stderr.decode(errors="replace"))
            output += out
        return output

    def fail(self, *commands: str, timeout: Optional[float] = 900) -> str:
        """Run each command; raise if any of them succeeds; return the stdout."""
        output = ""
        for command in commands:
            p = self.run(command, timeout=timeout)
            out = p.stdout.decode(errors="replace")
            if p.returncode == 0:
                raise CommandFailed(command, 0, out, "expected a failure, but the command succeeded")
            output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: float = 900, interval: float = 0.25) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status, out = self.execute(command, timeout=max(1.0, deadline - time.monotonic()))
            if status == 0:
                return out
            if time.monotonic() >= deadline:
                raise CommandFailed(f"{command} (waited {timeout:.0f} s)", status, out, self._last_stderr)
            time.sleep(interval)

    def wait_until_fails(self, command: str, timeout: float = 900, interval: float = 0.25) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status, out = self.execute(command, timeout=max(1.0, deadline - time.monotonic()))
            if status != 0:
                return out
            if time.monotonic() >= deadline:
                raise CommandFailed(f"{command} (expected to fail, waited {timeout:.0f} s)", 0, out, "")
            time.sleep(interval)

    def systemctl(self, q: str) -> tuple[int, str]:
        return self.execute(f"systemctl {q}")

    def get_unit_info(self, unit: str) -> dict[str, str]:
        status, out = self.execute(f"systemctl --no-pager show {shlex.quote(unit)}")
        if status != 0:
            raise CommandFailed(f"systemctl show {unit}", status, out, self._last_stderr)
        info = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key] = value
        return info

    def get_unit_property(self, unit: str, prop: str) -> str:
        return self.succeed(f"systemctl show -P {shlex.quote(prop)} {shlex.quote(unit)}").strip()

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        state = self.get_unit_info(unit)["ActiveState"]
        if state != require_state:
            raise AssertionError(f"expected unit {unit} to be in state '{require_state}' but it is in state '{state}'")

    def wait_for_unit(self, unit: str, timeout: float = 900) -> None:
        """Wait until the unit is active; fail at once if it fails or stops with nothing queued."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.get_unit_info(unit)
            state = info["ActiveState"]
            if state == "active":
                return
            if state == "failed":
                raise AssertionError(f"unit {unit} reached state failed")
            if state == "inactive":
                _, jobs = self.execute("systemctl list-jobs --full --no-legend --plain")
                if "No jobs" in jobs or unit not in jobs:
                    raise AssertionError(f"unit {unit} is inactive and there are no pending jobs")
            if time.monotonic() >= deadline:
                raise AssertionError(f"unit {unit} not active after {timeout:.0f} s (state {state})")
            time.sleep(0.2)

    def copy_from_host(self, source: str, target: str) -> None:
        """Copy a host file or directory to target inside (a directory becomes target)."""
        src = Path(source)
        if src.is_dir():
            tar = subprocess.run(["tar", "-C", str(src), "-cf", "-", "."], check=True, stdout=subprocess.PIPE).stdout
            q = shlex.quote(target)
            p = self.run(f"mkdir -p {q} && tar -C {q} -xf -", input=tar)
        else:
            mode = src.stat().st_mode & 0o7777
            q = shlex.quote(target)
            p = self.run(f"mkdir -p \"$(dirname {q})\" && cat > {q}.tmp-copy && chmod {mode:o} {q}.tmp-copy && mv -f {q}.tmp-copy {q}",
                         input=src.read_bytes())
        if p.returncode != 0:
            raise CommandFailed(f"copy {source} to {target}", p.returncode, "", p.stderr.decode(errors="replace"))

    def write_file(self, target: str, content: str, mode: int = 0o644) -> None:
        """Write text to a file inside (replacing it atomically)."""
        q = shlex.quote(target)
        p = self.run(f"mkdir -p \"$(dirname {q})\" && cat > {q}.tmp-write && chmod {mode:o} {q}.tmp-write && mv -f {q}.tmp-write {q}",
                     input=content.encode())
        if p.returncode != 0:
            raise CommandFailed(f"write {target}", p.returncode, "", p.stderr.decode(errors="replace"))

    def log(self, message: str) -> None:
        log(f"{self.name}: {message}")
