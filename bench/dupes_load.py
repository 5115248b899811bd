"""The Python-process load for duplicate detection, built so that the right answer is known.

Real Python processes (`python -S`: no site, fast start), each running a small script file of its own from a
folder of its own. The mix is designed so that resolving arguments against *our* cwd gets it wrong:

- A  true duplicates: projA{i}/train.py started once from its folder (`train.py`) and once from the root folder
     (`projA{i}/train.py`): one script, two runs.
- B  same name, different scripts: projB{j}/train.py, each started once from its own folder (`train.py`).
- C  workers: loaders/loader{k}.py forks 3 workers (same command line): one run, not a duplicate.
- D  symlinks: shared/eval{m}.py started from shared/ (`eval{m}.py`) and as links/eval{m}.py (a symlink to it,
     absolute path): one script.
- F  absolute paths, twice: abs/a{n}.py. Any approach should find these.
- G  modules: `-m jobmod` twice in the same folder mods{g}/ (identity: module + cwd).
- E  filler: single/s{n}.py by absolute path, once each.

Every process carries the marker token in argv and environment; workers set a parent-death SIGKILL and are
registered with the Load by pid.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from bench.load import Load, LoadError

WORKERS = 3

SCRIPT = """\
# pgbench script {name}
import os, signal
rd = os.environ["PGBENCH_READY"]
parent = os.getpid()
kids = []
for _ in range({workers}):
    pid = os.fork()
    if pid == 0:
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != parent:
            os._exit(0)
        while True:
            signal.pause()
    kids.append(pid)
tmp = os.path.join(rd, "." + str(parent))
with open(tmp, "w") as f:
    f.write(" ".join(map(str, kids)))
os.rename(tmp, os.path.join(rd, str(parent)))
while True:
    signal.pause()
"""


@dataclass
class DupesLoad:
    root: Path
    truth: set[frozenset[int]] = field(default_factory=set)  # the duplicate groups, by instance pid
    instances: list[int] = field(default_factory=list)  # every run's main process
    workers: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # processes per kind

    @property
    def pids(self) -> set[int]:
        return set(self.instances) | set(self.workers)


def _plan(total: int) -> dict[str, int]:
    """How many scripts of each kind for `total` Python processes."""
    n = {
        "A": max(1, total // 15),
        "B": max(1, total // 15),
        "C": max(1, total // 60),
        "D": max(1, total // 60),
        "F": max(1, total // 30),
        "G": max(1, total // 150),
    }
    used = 2 * n["A"] + n["B"] + (1 + WORKERS) * n["C"] + 2 * n["D"] + 2 * n["F"] + 2 * n["G"]
    if used > total:
        raise ValueError(f"{total} Python processes are too few for the duplicates mix")
    n["E"] = total - used
    return n


def _write(path: Path, name: str, workers: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SCRIPT.format(name=name, workers=workers))
    return path


def start(load: Load, total: int) -> DupesLoad:
    """Start `total` Python processes (workers included) under load.tmp/dupes; the caller stops them."""
    root = load.tmp / "dupes"
    ready = load.tmp / "dupes-ready"
    ready.mkdir(parents=True)
    py = sys.executable
    mark = f"--mark={load.token}"
    env = {"PGBENCH_READY": str(ready)}
    d = DupesLoad(root)
    n = _plan(total)
    pgid = 0

    def go(argv: list[str], cwd: Path) -> int:
        nonlocal pgid
        pid = load.spawn([py, "-S", *argv, mark], cwd=cwd, pgroup=pgid, env=env)
        pgid = pgid or pid
        d.instances.append(pid)
        return pid

    for i in range(n["A"]):
        _write(root / f"projA{i}" / "train.py", f"A{i}")
        a = go(["train.py", "--lr", "0.1"], root / f"projA{i}")
        b = go([f"projA{i}/train.py", "--lr", "0.2"], root)
        d.truth.add(frozenset((a, b)))
    for j in range(n["B"]):
        _write(root / f"projB{j}" / "train.py", f"B{j}")
        go(["train.py", "--lr", "0.1"], root / f"projB{j}")
    for k in range(n["C"]):
        go([str(_write(root / "loaders" / f"loader{k}.py", f"C{k}", WORKERS))], root / "loaders")
    for m in range(n["D"]):
        _write(root / "shared" / f"eval{m}.py", f"D{m}")
        (root / "links").mkdir(exist_ok=True)
        link = root / "links" / f"eval{m}.py"
        link.symlink_to(Path("..") / "shared" / f"eval{m}.py")
        a = go([f"eval{m}.py"], root / "shared")
        b = go([str(link)], root)
        d.truth.add(frozenset((a, b)))
    for f in range(n["F"]):
        script = str(_write(root / "abs" / f"a{f}.py", f"F{f}"))
        d.truth.add(frozenset((go([script, "--seed", "1"], root), go([script, "--seed", "2"], root))))
    for g in range(n["G"]):
        _write(root / f"mods{g}" / "jobmod.py", f"G{g}")
        d.truth.add(
            frozenset((go(["-m", "jobmod"], root / f"mods{g}"), go(["-m", "jobmod"], root / f"mods{g}")))
        )
    for e in range(n["E"]):
        go([str(_write(root / "single" / f"s{e}.py", f"E{e}"))], root)

    def done() -> list[str]:
        return [name for name in os.listdir(ready) if name.isdigit()]

    deadline = time.monotonic() + 120
    while len(done()) < len(d.instances):
        dead = [p for p in d.instances if not procstat.alive(p)]
        if dead:
            raise LoadError(f"{len(dead)} Python load processes exited early (e.g. pid {dead[0]})")
        if time.monotonic() > deadline:
            raise LoadError(f"only {len(done())} of {len(d.instances)} Python processes started")
        time.sleep(0.05)
    for name in done():
        kids = [int(x) for x in (ready / name).read_text().split()]
        d.workers += kids
    load.track(d.workers)
    d.counts = dict(n)
    return d
