"""Pipeline efficiency: images/s of `facefoundry run` divided by images/s of the bare generator loop
on the same model in one process, measured side by side in one run.

The preset is the smoke preset made generation-heavy (more denoising steps), so the ratio shows what
Ray, the filter and the writer cost on top of generation. Usage: python bench/pipeline.py [--identities N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from facefoundry.config import load_config
from facefoundry.dataset.manifest import plan_units
from facefoundry.identities.store import write_identities
from facefoundry.pipelines.runner import resolve_model_paths, run
from facefoundry.pipelines.stages import GenerateStage
from facefoundry.runinfo import prepare_run_folder

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    overrides = [f"identities.count={args.identities}", "images.per_identity=4", f"generator.steps={args.steps}",
                 "output.identities_per_unit=2", "filter.upsample=0"]
    cfg = load_config(REPO / "configs" / "smoke.yaml", overrides)
    images = args.identities * 4
    with tempfile.TemporaryDirectory(prefix="ffbench-") as tmp, open("/dev/null", "w") as quiet:
        bare_dir, run_dir = Path(tmp) / "bare", Path(tmp) / "run"
        # Bare loop: the same generator and units in this process, no Ray, no filter, no writer.
        prepare_run_folder(bare_dir, cfg)
        write_identities(bare_dir, cfg)
        stage = GenerateStage(cfg, str(bare_dir), resolve_model_paths(cfg, bare_dir))
        stage.setup()
        started = time.perf_counter()
        for unit in plan_units(cfg.identities.count, cfg.output.identities_per_unit):
            stage(unit)
        bare = images / (time.perf_counter() - started)
        # The pipeline, end to end (Ray start-up, model loading in the actors and the dlib filter included).
        started = time.perf_counter()
        summary = run(cfg, run_dir, log=quiet)
        piped = summary.images_generated / (time.perf_counter() - started)
    print(f"preset: smoke with {args.identities} identities x 4 images, {args.steps} steps; torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"bare generator loop (one process): {bare:.2f} images/s")
    print(f"facefoundry run (embedded Ray, generator + dlib filter + writer): {piped:.2f} images/s")
    print(f"pipeline efficiency: {piped / bare:.2f} (goal >= 0.85)")


if __name__ == "__main__":
    main()
