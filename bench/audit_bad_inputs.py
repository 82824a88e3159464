"""Audit: break threedrs the way a user would, over 100 times, and count how each break is answered.

Run from the repository root (under a minute on 2 cores: 22-32 s wall measured while other jobs ran):

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/audit_bad_inputs.py --out audit.md

Once, it builds a tiny world: SynthRooms (6 rooms x 6 frames, 64x48), the geometry teacher's feature cache, a
4-step training run of the tiny Qwen2-VL with checkpoints at steps 2 and 4, and an evaluation folder (ScanRefer
and ScanQA, 4 samples each). Every case (``bench/audit_cases_*.py``) gets a fresh copy of that world
(times preserved), breaks one thing in it, runs one ``threedrs`` command in this process through
``threedrs.cli.main`` (a few cases start a second process or kill one), and is classified:

- clear error: exit code 1 and exactly one ``threedrs <command>: error:`` line, which names what the case
  expects (the file, key or record at fault);
- unclear error: the command stopped with exit code 1, but its line does not name what is at fault;
- recovered: the case expects a recovery (fallback to an older checkpoint, re-extraction, resuming a cut file)
  and the command succeeded, said so, and left the right result behind;
- silent result: the command succeeded where it should have refused, or recovered without saying so;
- traceback: an exception escaped the command line;
- setup failed: the case could not break this world (only when run against another version of threedrs).

Each pickle payload planted by a case writes a marker file when unpickled; "code ran" counts cases whose marker
exists afterwards. Cases marked with an owner (issue 10) check data content that another change validates.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import audit_cases_training  # noqa: E402,F401  (registers its cases: config, checkpoints, resuming)
import audit_cases_files  # noqa: E402,F401  (registers its cases: evaluation folders, feature cache, data)
from audit_world import CASES, Env, base_overrides  # noqa: E402

OUTCOMES = ("clear error", "recovered", "unclear error", "silent result", "traceback")


def build_world(work: Path) -> Path:
    """SynthRooms + cache + a 4-step run + an evaluation folder under ``work/world``; returns that folder."""
    from threedrs.config import SynthConfig, load_config
    from threedrs.data.synthetic import generate
    from threedrs.evaluate import evaluate
    from threedrs.extract import extract
    from threedrs.train import train

    world = work / "world"
    if (world / "done").is_file():
        return world
    shutil.rmtree(world, ignore_errors=True)
    generate(SynthConfig(scenes=6, frames=6, width=64, height=48, seed=3), world / "rooms", progress=False)
    cfg = load_config(None, base_overrides(world / "rooms", world / "run", world / "cache"))
    extract(cfg)
    train(cfg, progress=False)
    evaluate(cfg, progress=False)
    (world / "done").write_text("ok\n")
    return world


def fresh_env(world: Path, folder: Path) -> Env:
    """A copy of the world (copy2 keeps modification times, so fingerprints still match) for one case."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("rooms", "cache", "run"):
        shutil.copytree(world / name, folder / name, copy_function=shutil.copy2)
    for lock in folder.rglob("*.lock"):
        lock.unlink()
    env = Env(folder)
    env.config.write_text("name: audit\n")
    return env


def classify(case, code: int | None, out: str, err: str, escaped: str | None, env: Env) -> tuple[str, str]:
    """(outcome, the line that decided it)."""
    if escaped is not None:
        return "traceback", escaped
    lines = re.findall(r"threedrs \w+: error: [^\r\n]*", err)  # may follow a progress bar on its line
    shown = lines[0] if lines else (err.strip().splitlines() or [""])[-1]
    if code != 0:
        if case.kind == "error" and len(lines) == 1 and re.search(case.expect, lines[0]):
            return "clear error", shown
        return "unclear error", shown
    if case.kind == "error":
        return "silent result", (out.strip().splitlines() or [""])[-1]
    said = re.search(case.expect, out + err)
    try:
        problem = case.check(env) if case.check is not None else None
    except Exception as exc:  # what the command left behind cannot even be read
        problem = f"{type(exc).__name__}: {exc}"
    if said and problem is None:
        return "recovered", said.group(0)
    return "silent result", problem or f"no note matching {case.expect!r}"


def run_case(case, env: Env) -> tuple[str, str, float]:
    from threedrs.cli import main

    try:
        argv = case.run(env)
    except Exception as exc:  # the case could not break this world (e.g. run against another version)
        return "setup failed", f"{type(exc).__name__}: {exc}"[:200], 0.0
    out, err = io.StringIO(), io.StringIO()
    escaped, code = None, None
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv]) if argv else 0
        except BaseException as exc:  # the audit counts what escapes the command line
            if isinstance(exc, KeyboardInterrupt):
                raise
            escaped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            err.write(traceback.format_exc())
    outcome, line = classify(case, code, out.getvalue(), err.getvalue(), escaped, env)
    return outcome, line, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/threedrs_audit", help="scratch folder (default /tmp/threedrs_audit)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    parser.add_argument("--out", default=None, help="also write the table as markdown to this file")
    args = parser.parse_args()
    work = Path(args.work)
    world = build_world(work)
    cases = [c for c in CASES if args.only is None or args.only in c.name]
    rows, counts, code_ran = [], Counter(), 0
    for n, case in enumerate(cases, 1):
        env = fresh_env(world, work / "case")
        outcome, line, seconds = run_case(case, env)
        ran = env.marker.exists()
        code_ran += ran
        counts[outcome] += 1
        rows.append((n, case, outcome, line, ran))
        flag = " CODE RAN" if ran else ""
        print(f"{n:3d} {outcome:13s}{flag} {case.name}  [{seconds:.1f} s] {line[:110]}", flush=True)
    summary = ", ".join(f"{k}: {counts[k]}" for k in OUTCOMES) + f"; code ran: {code_ran}"
    if counts["setup failed"]:
        summary += f"; setup failed: {counts['setup failed']}"
    print(f"\n{len(cases)} cases: {summary}")
    owned = Counter(o for _, c, o, _, _ in rows if c.owner)
    if owned:
        print("of which cases owned by " + ", ".join(sorted({c.owner for c in cases if c.owner})) + ": "
              + ", ".join(f"{k}: {v}" for k, v in owned.items()))
    if args.out:
        table = ["| # | case | outcome | message |", "|---|---|---|---|"]
        for n, case, outcome, line, ran in rows:
            owner = f" ({case.owner})" if case.owner else ""
            text = line[:160].replace("|", "\\|").replace(str(work), "…")
            table.append(f"| {n} | {case.name}{owner} | {outcome}{' + CODE RAN' if ran else ''} | {text} |")
        Path(args.out).write_text(f"{len(cases)} cases: {summary}\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
