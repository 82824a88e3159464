"""The `threedrs` command line: one subcommand per job; each imports its module only when it runs."""

from __future__ import annotations

import argparse
import sys

from threedrs import __version__
from threedrs.config import ConfigError


def _size(text: str) -> tuple[int, int]:
    """Parse `WxH` (e.g. 224x224) into (width, height)."""
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT (e.g. 224x224), got {text!r}") from None


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="YAML file under configs/ (defaults when omitted)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any config value, e.g. data.frames=8")


def _cmd_synth(args: argparse.Namespace) -> None:
    from threedrs.config import SynthConfig, validate
    from threedrs.data.synthetic import generate

    width, height = args.size
    cfg = SynthConfig(scenes=args.scenes, frames=args.frames, width=width, height=height, seed=args.seed,
                      invalid_pose_frames=args.invalid_poses)
    validate(cfg)
    summary = generate(cfg, args.out, progress=True)
    print(summary.describe())


def _cmd_config(args: argparse.Namespace) -> None:
    from threedrs.config import dump_yaml, load_config

    print(dump_yaml(load_config(args.config, args.overrides)), end="")


def _cmd_extract(args: argparse.Namespace) -> None:
    from threedrs.extract import main_extract

    main_extract(args)


def _cmd_probe(args: argparse.Namespace) -> None:
    from threedrs.probe import main_probe

    main_probe(args)


def _cmd_train(args: argparse.Namespace) -> None:
    from threedrs.config import load_config
    from threedrs.train import train

    result = train(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    print(f"trained {result.steps} steps; checkpoint {result.checkpoint}; log {result.log_path}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from threedrs.config import load_config
    from threedrs.evaluate import evaluate
    from threedrs.scoring import metrics_markdown

    extra = []
    if args.benchmarks:
        extra.append(f"eval.benchmarks=[{args.benchmarks}]")
    if args.probe:
        extra.append("eval.probe=true")
    cfg = load_config(args.config, list(args.overrides) + extra)
    result = evaluate(cfg, run_dir=args.out, overwrite=args.overwrite)
    print(metrics_markdown(result.run_dir.name, result.metrics))
    print(f"predictions and metrics in {result.run_dir}")


def _cmd_export(args: argparse.Namespace) -> None:
    from threedrs.export import main_export

    main_export(args)


def _cmd_convert_official(args: argparse.Namespace) -> None:
    from threedrs.convert_official import main_convert

    main_convert(args)


def _cmd_score(args: argparse.Namespace) -> None:
    from threedrs.scoring import main_score

    main_score(args)


def _cmd_report(args: argparse.Namespace) -> None:
    from threedrs.eval_report import main_report

    main_report(args)


def _cmd_demo(args: argparse.Namespace) -> None:
    from threedrs.demo import main_demo

    main_demo(args.out, args.seeds, args.full, args.variants, args.regenerate, args.posenc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threedrs",
        description="3D-aware representation supervision (3DRS) for multimodal LLMs: measure the 3D-awareness of "
                    "visual tokens, distil a 3D teacher into an MLLM, evaluate on ScanNet benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"threedrs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help="generate SynthRooms, a procedural benchmark in the ScanNet layout",
                       description="Render procedural rooms (colour JPEG, 16-bit depth PNG in mm, camera-to-world "
                                   "poses, intrinsics, axis alignment, object instances) and write ScanRefer, "
                                   "Multi3DRefer, Scan2Cap, ScanQA and SQA3D annotations in their official formats.")
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--scenes", type=int, default=40, help="number of rooms (default 40)")
    p.add_argument("--frames", type=int, default=16, help="frames per room (default 16)")
    p.add_argument("--size", type=_size, default=(224, 224), help="image size WxH (default 224x224)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    p.add_argument("--invalid-poses", type=int, default=1,
                   help="frames per room written with an invalid (-inf) pose, as in real ScanNet (default 1)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("config", help="print the resolved configuration (defaults + YAML + overrides)",
                       description="Load a config the way every command does and print every field as YAML.")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("extract", help="run the frozen teacher over every scene once and write the feature cache",
                       description="Encode each scene's frames (the frame list shared with the student) with the "
                                   "configured teacher, pool them to teacher.grid and write one float16 safetensors "
                                   "file per scene plus a manifest under teacher.cache_dir. Resumable; launch with "
                                   "torchrun or accelerate to split the scenes over GPUs.")
    _add_config_args(p)
    p.add_argument("--scenes", default=None, help="comma-separated scene ids (default: every train and val scene)")
    p.add_argument("--overwrite", action="store_true", help="delete the cache in teacher.cache_dir first")
    p.add_argument("--verify", action="store_true",
                   help="fingerprint the frames by content (sha256), not only by size and modification time; "
                        "scenes extracted without it get their sha256 recorded, without running the teacher")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("probe", help="score how 3D-aware a teacher's or an MLLM's tokens are (multi-view correspondence)",
                       description="Score how 3D-aware a teacher's features (probe.target=teacher: pooled to "
                                   "teacher.grid, from the feature cache when it matches) or an MLLM's visual tokens "
                                   "(probe.target=model: at probe.layers, with the 3D position encoding when "
                                   "probe.posenc, from probe.checkpoint or model.*) are, with the multi-view "
                                   "correspondence score on every scene of data.split; print a table and write "
                                   "probe_<teacher>.json / probe_model_<family>.json under output_dir.")
    _add_config_args(p)
    p.add_argument("--scenes", default=None, help="comma-separated scene ids (default: every scene of data.split)")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("train", help="fine-tune an MLLM with 3D representation supervision (accelerate)",
                       description="Train the configured model on the configured benchmarks with the text / grounding "
                                   "losses plus the 3DRS alignment loss against cached teacher features. Runs on CPU, "
                                   "one GPU, or many through `accelerate launch --config_file configs/accelerate/...`.")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in output_dir (checkpoints, log, record, eval/) and start afresh")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate on ScanRefer, Multi3DRefer, Scan2Cap, ScanQA and SQA3D",
                       description="Run the trained model (newest checkpoint in output_dir, or eval.checkpoint) on "
                                   "the benchmarks, append predictions to <run>/predictions/<benchmark>.jsonl as they "
                                   "are produced (a re-run of the same checkpoint, config and data skips what is "
                                   "done; another one is refused unless --overwrite), then score them (metrics.json, "
                                   "metrics.md). --probe also records each sample's 3D-awareness score.")
    _add_config_args(p)
    p.add_argument("--benchmarks", default=None, help="comma-separated subset (default: eval.benchmarks)")
    p.add_argument("--probe", action="store_true", help="record per-sample 3D-awareness (eval.probe=true)")
    p.add_argument("--out", default=None, help="run folder (default: <output_dir>/eval)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete predictions of another run (other checkpoint, config or data) in the folder first")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="export a training run to a folder plain transformers loads",
                       description="Write the newest (or --step's) checkpoint of a training run as a Hugging Face "
                                   "folder: the model with LoRA merged (loadable with the family class or "
                                   "AutoModelForImageTextToText), the tokenizer with <ground> and <coord>, the image "
                                   "processor, and threedrs's heads beside it (threedrs_heads.safetensors + .json). "
                                   "`threedrs eval RUN/config.yaml model.path=OUT` evaluates it.")
    p.add_argument("run", help="training run folder (its output_dir: config.yaml and checkpoints/)")
    p.add_argument("out", help="new folder to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the newest)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight dtype (default auto: the base checkpoint's own, float32 for tiny models; float32 "
                        "keeps the float32 master weights exactly)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert-official", help="convert the authors' Video-3D LLM / 3DRS checkpoint to a threedrs "
                                                "model folder",
                       description="Read a Video-3D LLM / 3DRS checkpoint folder (their LLaVA-NeXT config.json, "
                                   "tokenizer, safetensors or .bin shards; .bin only through the restricted loader) "
                                   "and write a folder plain transformers loads as LLaVA-OneVision, with their "
                                   "grounding and alignment heads beside it (threedrs_heads.safetensors + .json) and "
                                   "the settings of their inference path recorded. Every source tensor is mapped or "
                                   "listed as dropped; nothing is written on an error. `threedrs eval "
                                   "configs/official_3drs.yaml model.path=OUT` evaluates it.")
    p.add_argument("src", help="the authors' checkpoint folder (config.json, tokenizer, weights)")
    p.add_argument("out", help="new folder to write")
    p.set_defaults(func=_cmd_convert_official)

    p = sub.add_parser("score", help="re-score an evaluation run's predictions files (no model needed)",
                       description="Read RUN_DIR/predictions/<benchmark>.jsonl (every benchmark present, or those "
                                   "named), compute the benchmark scores and write RUN_DIR/metrics.json and "
                                   "RUN_DIR/metrics.md (paper Table 1 layout plus one detailed table per benchmark).")
    p.add_argument("run_dir", help="evaluation run folder holding predictions/<benchmark>.jsonl")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated subset of scanrefer,multi3drefer,scan2cap,scanqa,sqa3d (default: every file)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java and ~11 s to start)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("report", help="tables, 3D-awareness quartile plots and charts for one or more evaluation runs",
                       description="Score each run (or reuse its up-to-date metrics.json), set the 3D-awareness "
                                   "measures recorded in the predictions (score, background, contrast, recall) side "
                                   "by side with which one separates the runs against the seed spread, split each "
                                   "benchmark's samples into quartiles by each measure (paper Fig. 2, with "
                                   "Spearman's rho), chart the means per run (Fig. 3b) and write OUT/report.md with "
                                   "the PNG figures.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluation run folders; the first is the reference")
    p.add_argument("--out", required=True, help="output folder for report.md and the PNG figures")
    p.add_argument("--names", default=None, help="comma-separated run names (default: the folder names); runs "
                                                 "given the same name are seeds of one recipe (mean ± std)")
    p.add_argument("--layer", default="-1", help="layer key of the predictions' 3D-awareness measures (default -1)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR when a run has to be scored")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="run the pipeline in miniature on SynthRooms (what `make demo` runs)",
                       description="The paper in miniature on SynthRooms, with no weights and no downloads: "
                                   "generate rooms, cache a 3D (geometry oracle) and a 2D (appearance) teacher, train "
                                   "a tiny MLLM as baseline, 3DRS and 3DRS with the 2D teacher, evaluate all five "
                                   "benchmarks with per-sample 3D-awareness, and write demo_out/report.md with the "
                                   "tables and figures. Finished stages are reused on a re-run.")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--seeds", type=int, default=1, help="repeat every training with this many seeds (default 1)")
    p.add_argument("--full", action="store_true", help="more rooms, frames and steps (for a GPU or more time)")
    p.add_argument("--variants", action="store_true", help="also train with the teacher-free correspondence loss")
    p.add_argument("--regenerate", action="store_true", help="regenerate SynthRooms even if present")
    p.add_argument("--posenc", action="store_true",
                   help="add the 3D position encoding to the visual tokens (off by default in the demo, see report)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:  # each names its file, key or record
        print(f"threedrs {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
