"""Pipeline efficiency and driver memory, measured side by side in one run.

Efficiency = images/s of `facefoundry run` / images/s of the bare generator loop on the same model in
one process (no Ray, no filter, no writer). The bare loop runs half its units before the pipeline and
half after, so a load change on this noisy machine weighs on both sides alike. The preset is the smoke
preset made generation-heavy (25 denoising steps, 64 identities x 4 images), with the tiny model built
once beforehand and loaded from its folder by both sides, as a real run loads real weights. Three
pipeline figures are printed: end to end (Ray start-up, actor start and model loading included), steady
state (from the first task's units, which land together, to the last unit), and the fixed start-up cost
they imply.

`--memory` adds the driver's peak RSS for 10 vs 1,000 work units (tiny Vec2Face, one image per
identity, one identity per unit, each run in its own process): it should not grow with the units.

Usage: python bench/pipeline.py [--identities N] [--steps S] [--memory]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facefoundry.config import load_config
from facefoundry.dataset.manifest import plan_units
from facefoundry.generators.arc2face.tiny import build_tiny_arc2face
from facefoundry.identities.store import write_identities
from facefoundry.pipelines import progress as progress_module
from facefoundry.pipelines.runner import run
from facefoundry.pipelines.stage import units_per_task
from facefoundry.pipelines.stages import GenerateStage, ModelPaths
from facefoundry.runfolder.runinfo import prepare_run_folder

REPO = Path(__file__).resolve().parents[1]
PER_IDENTITY = 4


class UnitClock:
    """A log stream noting when progress lines arrive (one per unit: the bench sets LOG_EVERY_S to 0)."""

    def __init__(self):
        self.times: list[float] = []

    def write(self, text: str) -> None:
        if text.startswith(("units ", "\runits ")):
            self.times.append(time.perf_counter())

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def efficiency(identities: int, steps: int, tmp: Path) -> None:
    model, base = build_tiny_arc2face(tmp / "models", seed=0)
    overrides = [f"identities.count={identities}", f"images.per_identity={PER_IDENTITY}", f"generator.steps={steps}",
                 "output.identities_per_unit=2", "filter.upsample=0", "generator.tiny=false",
                 f"generator.model={model}", f"generator.base_model={base}"]
    cfg = load_config(REPO / "configs" / "smoke.yaml", overrides)
    units = plan_units(cfg.identities.count, cfg.output.identities_per_unit)
    images = identities * PER_IDENTITY
    # Bare loop: the same generator and units in this process (torch's default threads: every core).
    bare_dir = tmp / "bare"
    prepare_run_folder(bare_dir, cfg)
    write_identities(bare_dir, cfg)
    parts = startup_parts(cfg)
    stage = GenerateStage(cfg, str(bare_dir), ModelPaths(str(model), str(base)))
    loading = time.perf_counter()
    stage.setup()
    parts["model load (warm imports)"] = time.perf_counter() - loading
    half = len(units) // 2

    def bare_loop(part: list) -> float:
        started = time.perf_counter()
        for unit in part:
            stage(unit)
        return time.perf_counter() - started

    bare_seconds = bare_loop(units[:half])
    clock = UnitClock()
    progress_module.LOG_EVERY_S = 0.0  # a progress line (a clock tick) for every unit
    started = time.perf_counter()
    summary = run(cfg, tmp / "run", log=clock)
    total = time.perf_counter() - started
    bare_seconds += bare_loop(units[half:])
    bare = images / bare_seconds
    assert summary.images_generated == images and not summary.failed, summary
    assert len(clock.times) == len(units), (len(clock.times), len(units))
    piped = images / total
    per_unit = images / len(units)
    # Units travel in tasks of `per_task` and land in bursts: the steady state runs from the end of the first
    # task's burst to the last unit, and the first task's own work at that rate is not fixed cost.
    per_task = units_per_task(cfg, len(units))
    steady = per_unit * (len(units) - per_task) / (clock.times[-1] - clock.times[per_task - 1])
    first = clock.times[per_task - 1] - started
    print(f"preset: smoke, {identities} identities x {PER_IDENTITY} images, {steps} steps, {len(units)} units, "
          f"{per_task} units per task")
    print(f"bare generator loop (one process):   {bare:.2f} images/s")
    print(f"facefoundry run, end to end:         {piped:.2f} images/s  -> efficiency {piped / bare:.2f} "
          "(goal >= 0.85)")
    print(f"facefoundry run, steady state:       {steady:.2f} images/s  -> efficiency {steady / bare:.2f}")
    fixed = max(first - per_task * per_unit / steady, 0)
    print(f"fixed cost: {first:.1f} s to the first task's units, of which ~{fixed:.1f} s start-up; "
          f"total {total:.1f} s")
    print("start-up parts, each measured alone: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
          + f"; sum {sum(parts.values()):.1f} s (in the run they overlap and compete for the same cores)")


def startup_parts(cfg) -> dict[str, float]:
    """The pieces of the pipeline's fixed cost, each timed on its own: an embedded Ray coming up and going
    down, and a fresh worker process importing what a generator actor imports."""
    from facefoundry.local_ray import ray_session

    parts = {}
    started = time.perf_counter()
    with ray_session(cfg.ray):
        parts["ray.init"] = time.perf_counter() - started
        stopping = time.perf_counter()
    parts["ray.shutdown"] = time.perf_counter() - stopping
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import facefoundry.pipelines.executor, torch, diffusers"], check=True)
    parts["actor imports (fresh process)"] = time.perf_counter() - started
    return parts


MEMORY_PROBE = """
import resource, sys, os
from pathlib import Path
from facefoundry.config import load_config
from facefoundry.pipelines.runner import run
n, out = int(sys.argv[1]), Path(sys.argv[2])
cfg = load_config(Path(sys.argv[3]), [f"identities.count={n}", "images.per_identity=1", "images.perturbation=null",
                  "output.identities_per_unit=1", "filter.upsample=0"])
summary = run(cfg, out, log=open(os.devnull, "w"))
assert summary.units_written == n, summary
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def driver_memory(tmp: Path) -> None:
    peaks = {}
    for units in (10, 1000):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(units), str(tmp / f"mem{units}"),
             str(REPO / "configs" / "smoke-vec2face.yaml")],
            capture_output=True, text=True, check=True,
        )
        peaks[units] = int(done.stdout.split()[-1])
        print(f"driver peak RSS, {units:>4} units: {peaks[units]} MB ({time.perf_counter() - started:.0f} s)")
    print(f"driver memory 1000 vs 10 units: {peaks[1000] / peaks[10]:.2f}x (+{peaks[1000] - peaks[10]} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--memory", action="store_true", help="also measure driver memory for 10 vs 1000 units")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffbench-") as tmp:
        efficiency(args.identities, args.steps, Path(tmp))
        if args.memory:
            driver_memory(Path(tmp))


if __name__ == "__main__":
    main()
