"""`threedrs demo` (what `make demo` runs): the paper in miniature on SynthRooms, no weights, no downloads.

Stages, each with a progress bar and its wall time in the report:
1. SynthRooms: the default set (reused when its manifest matches the requested settings);
2. teacher caches: the weight-free geometry ORACLE (a 3D upper bound, not a learned model) and the per-pixel
   appearance teacher (the 2D comparison), pooled to the student's token grid;
3. training from scratch, same seed, data and steps, of a tiny Qwen2-VL-style MLLM: the baseline (text and
   grounding losses only), 3DRS (plus the alignment loss to the geometry teacher), 3DRS with the 2D teacher
   and, with `--variants`, the paper's teacher-free correspondence loss;
4. evaluation of every run on the val split (five benchmarks, each sample's 3D-awareness: score, background,
   contrast and correspondence recall) and of a chance-level policy;
5. `report.md` with the tables in miniature (Table 3: baseline vs 3DRS; Table 4: teachers), the 3D-awareness
   measures of every run with which one separates them, the quartile study (Fig. 2), the before/after chart
   (Fig. 3b) and training curves; the headline tables are printed to the terminal.
Nothing is tuned to show a gain: the report states the numbers with their seeds and spread, whichever way they
fall. `--seeds N` repeats every training with N seeds; `--full` uses more rooms, frames and steps.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from threedrs.config import ExperimentConfig, SynthConfig, load_config
from threedrs.demo_recipes import DEFAULT, FULL, RUNS, VARIANT_RUNS, DemoRun, DemoSize, StageTimes
from threedrs.demo_report import DemoResults, write_report

__all__ = ["DEFAULT", "FULL", "RUNS", "VARIANT_RUNS", "DemoRun", "DemoSize", "demo_config", "ensure_synthrooms",
           "main_demo", "run_demo"]


def demo_config(out: Path, size: DemoSize, run: DemoRun | None = None, seed: int = 0) -> ExperimentConfig:
    """The experiment config of one demo run (or of the shared data/teacher stages when run is None)."""
    grid = size.image // 14  # tiny Qwen2-VL: 7 px patches merged 2x2 -> one token per 14 px
    teacher = run.teacher if run is not None and run.teacher else "geometry"
    name = run.name if run is not None else "demo"
    values = [
        f"name={name}", f"seed={seed}", f"output_dir={out / 'runs' / f'{name}-seed{seed}'}",
        f"data.root={out / 'synthrooms'}", f"data.frames={size.frames}", "data.split=val",
        f"synth.scenes={size.scenes}", f"synth.frames={size.scan_frames}", f"synth.width={size.width}",
        f"synth.height={size.height}",
        f"teacher.name={teacher}", "teacher.channels=128", f"teacher.grid=[{grid},{grid}]",
        f"teacher.batch_frames={size.frames}", f"teacher.cache_dir={out / 'cache' / teacher}",
        f"model.image_size=[{size.image},{size.image}]", f"model.tiny_seed={seed}",
        f"align.loss={run.loss if run is not None else 'none'}", f"align.posenc={str(size.posenc).lower()}",
        f"train.steps={size.steps}", f"train.batch_size={size.batch_size}", "train.log_every=10",
        f"train.save_every={size.steps}", *(f"train.lr_{p}={size.lr}" for p in ("llm", "vision", "projector", "heads")),
        "eval.probe=true", "eval.probe_layers=[-1]", "correspondence.recall=true", "eval.meteor=false",
        "eval.batch_size=16",
        "eval.max_new_tokens=8", f"eval.limit={size.eval_limit if size.eval_limit else 'null'}",
    ]
    return load_config(None, values)


def ensure_synthrooms(cfg: SynthConfig, root: Path, regenerate: bool = False) -> None:
    """Generate SynthRooms into `root` unless a complete set made with the same settings is already there."""
    from threedrs.data.synthetic import generate

    manifest = root / "synthrooms.json"
    if manifest.is_file() and not regenerate:
        try:
            stored = json.loads(manifest.read_text()).get("config")
        except json.JSONDecodeError:
            stored = None
        if stored == asdict(cfg):
            print(f"SynthRooms: reusing {root} ({cfg.scenes} rooms x {cfg.frames} frames)")
            return
    summary = generate(cfg, root, progress=True)
    print(summary.describe())


def run_demo(out: str | Path = "demo_out", seeds: int = 1, full: bool = False, variants: bool = False,
             regenerate: bool = False, posenc: bool = False, size: DemoSize | None = None) -> Path:
    """Run every stage; returns the path of report.md. `size` overrides the default/full settings (tests)."""
    from threedrs.evaluate import evaluate, write_chance_predictions
    from threedrs.extract import extract
    from threedrs.train import train

    out = Path(out)
    size = size or (FULL if full else DEFAULT)
    if posenc:
        size = replace(size, posenc=True)
    runs = RUNS + (VARIANT_RUNS if variants else ())
    times = StageTimes()
    shared = demo_config(out, size)
    print(f"[1/5] SynthRooms ({size.scenes} rooms x {size.scan_frames} frames, {size.width}x{size.height})")
    start = time.perf_counter()
    ensure_synthrooms(shared.synth, Path(shared.data.root), regenerate)
    times.add("1. SynthRooms", start)

    print("[2/5] teacher features: geometry oracle (3D) and appearance (2D), pooled to the student grid")
    start = time.perf_counter()
    for teacher in sorted({r.teacher for r in runs if r.teacher}):
        extract(demo_config(out, size, next(r for r in runs if r.teacher == teacher)))
    times.add("2. teacher caches", start)

    results = DemoResults(size=size, runs=runs, seeds=list(range(seeds)))
    print(f"[3/5] training {len(runs)} recipes x {seeds} seed(s), {size.steps} steps each")
    for seed in range(seeds):
        for run in runs:
            cfg = demo_config(out, size, run, seed)
            start = time.perf_counter()
            print(f"  {run.name} (seed {seed}): {run.note}")
            train(cfg, resume=True)
            times.add("3. training", start)
            results.logs[(run.name, seed)] = Path(cfg.output_dir) / "train_log.jsonl"

    print("[4/5] evaluation on val (five benchmarks + per-sample 3D-awareness) and chance level")
    for seed in range(seeds):
        for run in runs:
            cfg = demo_config(out, size, run, seed)
            start = time.perf_counter()
            result = evaluate(cfg)
            times.add("4. evaluation", start)
            results.metrics[(run.name, seed)] = result.metrics
            results.eval_dirs[(run.name, seed)] = result.run_dir
    start = time.perf_counter()
    chance_dir = out / "runs" / "chance"
    results.chance = write_chance_predictions(shared, chance_dir)
    times.add("4. evaluation", start)

    print("[5/5] report")
    return write_report(out, results, times)


def main_demo(out: str, seeds: int, full: bool, variants: bool, regenerate: bool, posenc: bool) -> None:
    """CLI entry: run the demo and point at the report."""
    if seeds < 1:
        raise ValueError(f"--seeds: need at least 1 seed, got {seeds}")
    report = run_demo(out, seeds=seeds, full=full, variants=variants, regenerate=regenerate, posenc=posenc)
    print(f"\nFull report with figures: {report}")

