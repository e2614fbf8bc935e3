"""Scale rehearsal: the whole pipeline at 10^3, 10^4 and 10^5 work units with the no-op generator.

With ``generator.kind: noop`` (noise images, no model; see ``facefoundry.generators.noop.generator.rehearsal_config``:
one identity per unit, one 8 px image per identity, dlib filter in annotate mode) a run costs only what the
pipeline itself costs: planning, scheduling the units through Ray, filtering, writing shards and manifests,
resuming, and the finished-run tools. For each size and store (a local folder; the loopback S3 server, moto,
at the ``--s3-sizes``) every step runs as its own ``facefoundry`` process, and the bench prints:

- ``run``: the first run, wall time and units/s, and the driver's peak RSS (sampled every 0.1 s) and peak
  private memory (RSS less shared pages: Ray's object store is mapped into the driver and counts in its RSS);
- ``resume, nothing to do``: the same command again on the finished run (plan + one listing + manifests);
- ``resume, 1% lost``: after deleting a random 1 % of the manifests (those units, and only those, are redone);
- ``verify``, ``report``, ``card`` (local runs; ``verify`` on S3 too).

Then, per step, how it grows between consecutive sizes: the exponent ``log(t2/t1) / log(n2/n1)`` (1 = linear,
below 1 = a fixed cost still dominates) and, from the two largest sizes, a projection to 10^6 units.

Usage: python bench/scale.py [--sizes 1000 10000 100000] [--s3-sizes 1000 10000] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from facefoundry.dataset.manifest import plan_units
from facefoundry.generators.noop.generator import rehearsal_config
from facefoundry.layout import MANIFEST_DIR

REPO = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "facefoundry")]  # the console script installed beside this Python
LOST_FRACTION = 0.01
# Two writers: a writer spends most of a small unit waiting on fsync (shard, then manifest), not on a CPU.
RAY = {"num_cpus": os.cpu_count(), "writer_actors": 2}


@dataclass
class Step:
    seconds: float
    peak_rss: int  # bytes, the driver process alone
    peak_private: int  # of which not shared (RSS minus file-backed and shared memory, e.g. Ray's object store)
    output: str


@dataclass
class Measured:
    size: int
    store: str
    steps: dict[str, Step] = field(default_factory=dict)


def timed(args: list[str], env: dict[str, str]) -> Step:
    """Run ``args``; its wall time and the peak RSS of that process (not its Ray workers)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = [0, 0]

    def sample() -> None:
        with_proc = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                memory = with_proc.memory_info()
            except psutil.Error:
                return
            peak[0], peak[1] = max(peak[0], memory.rss), max(peak[1], memory.rss - memory.shared)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[1:3])} failed ({proc.returncode}):\n{output[-3000:]}")
    return Step(seconds, peak[0], peak[1], output)


def written(output: str) -> int:
    """Units written, from the run's one-line outcome (``done: <run>: N units written, ...``)."""
    line = next(line for line in reversed(output.splitlines()) if line.startswith(("done:", "incomplete:")))
    return int(line.split(": ", 2)[2].split(" units written")[0])


def lose_manifests(out: str, size: int, env: dict[str, str]) -> int:
    """Delete a random :data:`LOST_FRACTION` of the run's manifests; return how many."""
    from facefoundry.dataset.storage import open_store

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        if key in env:
            os.environ[key] = env[key]
    store = open_store(out)
    lost = random.Random(size).sample(plan_units(size, 1), max(1, int(size * LOST_FRACTION)))
    for unit in lost:
        store.delete(f"{MANIFEST_DIR}/{unit.name}.json")
    return len(lost)


def rehearse(size: int, store: str, out: str, config: Path, env: dict[str, str]) -> Measured:
    measured = Measured(size, store)
    steps = measured.steps
    print(f"[{store} {size:,} units] run ...", flush=True)
    steps["run"] = timed([*CLI, "run", str(config), "--out", out], env)
    assert written(steps["run"].output) == size, steps["run"].output[-2000:]
    steps["resume, nothing to do"] = timed([*CLI, "run", str(config), "--out", out], env)
    assert written(steps["resume, nothing to do"].output) == 0
    lost = lose_manifests(out, size, env)
    steps["resume, 1% lost"] = timed([*CLI, "run", str(config), "--out", out], env)
    assert written(steps["resume, 1% lost"].output) == lost, "exactly the units whose manifests were lost"
    steps["verify"] = timed([*CLI, "verify", out], env)
    if store == "local":
        steps["report"] = timed([*CLI, "report", out], env)
        steps["card"] = timed([*CLI, "card", out], env)
    for name, step in steps.items():
        print(f"    {name:24s} {step.seconds:8.1f} s   driver peak RSS {step.peak_rss / 2**20:7.0f} MiB "
              f"(private {step.peak_private / 2**20:.0f} MiB)", flush=True)
    return measured


def table(results: list[Measured]) -> None:
    for store in dict.fromkeys(r.store for r in results):
        rows = [r for r in results if r.store == store]
        names = list(dict.fromkeys(name for r in rows for name in r.steps))
        print(f"\n## {store}: seconds per step (run: units/s, driver peak RSS)\n")
        sizes = " | ".join(f"{r.size:,} units" for r in rows)
        print(f"| step | {sizes} | growth exponent | 10^6 units (projected) |")
        print("|---|" + "---|" * (len(rows) + 2))
        for name in names:
            cells, exponents = [], []
            for r in rows:
                step = r.steps.get(name)
                cell = "-" if step is None else f"{step.seconds:.1f} s"
                if name == "run" and step is not None:
                    cell += (f" ({r.size / step.seconds:.0f} units/s, {step.peak_rss / 2**20:.0f} MiB, private "
                             f"{step.peak_private / 2**20:.0f} MiB)")
                cells.append(cell)
            pairs = [(a, b) for a, b in zip(rows, rows[1:], strict=False) if name in a.steps and name in b.steps]
            for a, b in pairs:
                exponents.append(math.log(b.steps[name].seconds / a.steps[name].seconds) / math.log(b.size / a.size))
            growth = ", ".join(f"{e:.2f}" for e in exponents) or "-"
            projected = "-"
            if pairs:  # fixed cost + cost per unit through the two largest sizes; a power law if super-linear
                a, b = pairs[-1]
                ta, tb = a.steps[name].seconds, b.steps[name].seconds
                if exponents[-1] > 1.05:
                    seconds = tb * (1e6 / b.size) ** exponents[-1]
                else:
                    per_unit = max(tb - ta, 0.0) / (b.size - a.size)
                    seconds = tb + per_unit * (1e6 - b.size)
                projected = f"{seconds / 3600:.2f} h"
            print(f"| {name} | " + " | ".join(cells) + f" | {growth} | {projected} |")
        rss = [r.steps["run"].peak_rss / 2**20 for r in rows if "run" in r.steps]
        if len(rss) > 1:
            print(f"\ndriver peak RSS of `run`, largest / smallest size: {rss[-1] / rss[0]:.2f} (flat = 1)")
    print("\nprojection to 10^6 units: the fixed cost and the cost per unit through the two largest sizes (a power "
          "law instead where the growth exponent is above 1.05)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--s3-sizes", type=int, nargs="*", default=[1_000, 10_000])
    parser.add_argument("--work", type=Path, help="where the run folders go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ffscale-", dir=args.work))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "HF_HUB_OFFLINE": "1"}
    results: list[Measured] = []
    started = time.perf_counter()
    try:
        for size in args.sizes:
            config = work / f"rehearsal-{size}.yaml"
            config.write_text(yaml.safe_dump(rehearsal_config(size) | {"ray": RAY}))
            results.append(rehearse(size, "local", str(work / f"run-{size}"), config, env))
        if args.s3_sizes:
            sys.path.insert(0, str(REPO / "tests" / "helpers"))
            from s3server import CREDENTIALS, bucket_uri, s3_server

            env |= CREDENTIALS
            with s3_server() as server:
                for size in args.s3_sizes:
                    config = work / f"rehearsal-{size}.yaml"
                    config.write_text(yaml.safe_dump(rehearsal_config(size) | {"ray": RAY}))
                    results.append(rehearse(size, "s3 (moto, loopback)", bucket_uri(server.endpoint, "scale",
                                                                                    f"run-{size}"), config, env))
        table(results)
        print(f"\nbench total {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPUs")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
