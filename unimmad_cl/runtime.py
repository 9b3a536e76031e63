"""CPU threads and OpenMP wait policy: fair when other processes share the cores.

torch's CPU kernels run on an OpenMP team (this wheel: its own libgomp) of one thread per
core. A thread that reaches the end of a parallel region first waits for the others by
spinning: libgomp's default is 300,000 spins (milliseconds) before it sleeps. When other
processes are busy on those cores, the partner it waits for has been descheduled, so every
small op burns a time slice spinning: a base stage on a 2-core machine
shared with other torch jobs ran 15-25x slower instead of the ~5x of a fair share
(BENCHMARKS.md, "Fair under load").

The policy (`decide`, a pure function; `configure` applies it), from measurements:

- threads: the physical cores this process may use (affinity mask, cgroup CPU quota) minus
  the 1-minute load average, rounded, at least 1. A machine already busy gets one thread:
  no team, nothing to wait for (5x the samples/s of torch's default at load 4-5 on 2 cores);
  an idle one keeps one thread per core;
- waiting: GOMP_SPINCOUNT=1000 (spin tens of microseconds, then sleep). It keeps ~90 % of
  the default's speed on an idle machine (OMP_WAIT_POLICY=PASSIVE: ~80 %, no faster than one
  thread) and stops the collapse when load arrives after the start (or processes start
  together);
- overrides, strongest first: `unimmad-cl --threads N`, env UNIMMAD_THREADS, an
  OMP_NUM_THREADS already set (e.g. by torchrun); an OMP_WAIT_POLICY or GOMP_SPINCOUNT set by
  the user is kept; `--threads 0` leaves torch exactly as it is (its default threads, the
  runtime's default wait).

OpenMP reads its environment once, when the runtime loads (`import torch`), so `configure`
runs before that (`unimmad-cl` does it before any command) and sets the exact count right
after torch's import (MKL would cap OMP_NUM_THREADS at the physical cores). In a process that
imported torch first (a notebook, a test), auto leaves torch's threads alone and an explicit
count is set with `torch.set_num_threads`; the wait policy can no longer change there. This
module does not import torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from unimmad_cl.errors import UserError

ENV_VAR = "UNIMMAD_THREADS"
# spins of a waiting OpenMP thread before it sleeps (libgomp's default: 300,000, ~20 ms here)
SPIN_COUNT = 1000
# environment variables of the OpenMP runtime that this policy sets or respects
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class Settings:
    """What `decide` chose. `threads`/`spin_count` None: left as torch/OpenMP have them."""

    threads: int | None
    spin_count: int | None  # GOMP_SPINCOUNT
    source: str  # --threads, UNIMMAD_THREADS, OMP_NUM_THREADS, auto, or torch default
    cpus: int
    load: float | None

    def describe(self) -> str:
        """One line for the stage header, e.g. `threads: 1 (auto: 2 CPUs, load 3.4), OpenMP waits spin 1000 then sleep`."""
        if self.threads is None:
            head = "threads: torch default (--threads 0)"
        elif self.source == "auto":
            load = "unknown" if self.load is None else f"{self.load:.1f}"
            head = f"threads: {self.threads} (auto: {self.cpus} CPUs, load {load})"
        else:
            head = f"threads: {self.threads} ({self.source})"
        if self.threads is None or self.source == "set by the calling process":
            return head
        if self.spin_count is None:
            return head + ", OpenMP wait policy from the environment"
        return head + f", OpenMP waits spin {self.spin_count} then sleep"

    def to_json(self) -> dict:
        return {"threads": self.threads, "spin_count": self.spin_count, "source": self.source,
                "cpus": self.cpus, "load": self.load}


def parse_threads(value: str | int | None, where: str = "--threads") -> int | None:
    """`auto`/empty/None -> None (decide from the machine); a whole number >= 0 -> that number."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip().lower()
        if text in ("", "auto"):
            return None
        try:
            number = int(text)
        except ValueError:
            number = -1
    if number < 0:
        raise UserError(f"{where} {value!r}: expected auto or a whole number >= 0 (0: torch's default threads)")
    return number


def decide(cpus: int, load: float | None, requested: int | None = None, *,
           requested_from: str = "--threads", env: Mapping[str, str] | None = None) -> Settings:
    """The settings for a process that may use `cpus` cores while the 1-minute load average
    (other processes' runnable threads) is `load` (None: unknown).

    requested: a thread count the user asked for (None: auto; 0: leave torch alone), from
    `requested_from`. env: the environment the process started with; an OMP_NUM_THREADS there
    is taken when nothing was requested, and a user's OMP_WAIT_POLICY/GOMP_SPINCOUNT is kept.
    """
    env = {} if env is None else env
    cpus = max(1, int(cpus))
    if requested == 0:
        return Settings(None, None, "torch default", cpus, load)
    wait = None if any(env.get(v) for v in _WAIT_VARS) else SPIN_COUNT
    if requested is not None:
        return Settings(int(requested), wait, requested_from, cpus, load)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return Settings(int(omp), wait, "OMP_NUM_THREADS", cpus, load)
    free = cpus if load is None else cpus - max(0.0, load)
    return Settings(max(1, min(cpus, int(free + 0.5))), wait, "auto", cpus, load)


def available_cpus() -> int:
    """Cores this process may run on: the physical cores of its affinity mask (hyper-threads
    of one core count once, as in torch's default), capped by a cgroup v2 CPU quota
    (containers and CI runners started with `--cpus`)."""
    try:
        mask = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mask = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in mask:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            cores.add((open(topology + "physical_package_id").read().strip(), open(topology + "core_id").read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: every CPU a core
    cpus = len(cores)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def current_load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


_applied: Settings | None = None


def configure(requested: str | int | None = None, *, environ: MutableMapping[str, str] | None = None,
              cpus: int | None = None, load: float | None = None) -> Settings:
    """Decide (flag `requested`, else env UNIMMAD_THREADS, else OMP_NUM_THREADS, else the
    machine) and apply: set OMP_NUM_THREADS and GOMP_SPINCOUNT in the environment, which the
    OpenMP runtime reads when torch is imported, and, if torch is already imported, its
    thread count. Raises UserError on a bad flag or env value."""
    global _applied
    environ = os.environ if environ is None else environ
    where = "--threads" if requested is not None else ENV_VAR
    value = parse_threads(requested if requested is not None else environ.get(ENV_VAR), where)
    torch = sys.modules.get("torch")
    if value is None and torch is not None:
        # A process that imported torch before us (a notebook, a test) keeps its own threads
        # unless asked; the wait policy could not change any more anyway.
        _applied = Settings(torch.get_num_threads(), None, "set by the calling process",
                            available_cpus() if cpus is None else cpus, current_load() if load is None else load)
        return _applied
    settings = decide(available_cpus() if cpus is None else cpus, current_load() if load is None else load,
                      value, requested_from=where, env=environ)
    if settings.threads is not None:
        environ["OMP_NUM_THREADS"] = str(settings.threads)
        if torch is not None:  # too late for the environment: set torch's pool directly
            torch.set_num_threads(settings.threads)
        elif environ is os.environ:
            # MKL caps OMP_NUM_THREADS at the physical cores when torch initializes; the exact
            # count is set once torch has been imported.
            _set_threads_after_torch_import(settings.threads)
    if settings.spin_count is not None:
        environ["GOMP_SPINCOUNT"] = str(settings.spin_count)
    _applied = settings
    return settings


class _AfterTorchImport:
    """A meta-path finder that lets the normal import of torch run, then sets its threads."""

    def __init__(self, threads: int):
        self.threads = threads

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        run, threads = spec.loader.exec_module, self.threads

        def exec_module(module):
            run(module)
            if module.get_num_threads() != threads:
                module.set_num_threads(threads)

        spec.loader.exec_module = exec_module
        return spec


def _set_threads_after_torch_import(threads: int) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterTorchImport)]
    sys.meta_path.insert(0, _AfterTorchImport(threads))


def snapshot() -> tuple:
    """What `configure` may change (its environment variables, torch's thread count if torch
    is imported, the last settings), for `restore`."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT")}, threads, _applied


def restore(saved: tuple) -> None:
    """Undo `configure` (after a command run in-process, e.g. by tests)."""
    global _applied
    env, threads, _applied = saved
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterTorchImport)]
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def described_first(echo: Callable[[str], None], settings: Settings | None) -> Callable[[str], None]:
    """`echo` that prints `settings.describe()` just before its first message, so that a
    command that stops on bad input still answers with its one error line."""
    if settings is None:
        return echo
    pending = [settings.describe()]

    def first(msg: str) -> None:
        while pending:
            echo(pending.pop())
        echo(msg)

    return first


def applied() -> Settings | None:
    """The settings of the last `configure` in this process (None: never configured)."""
    return _applied
