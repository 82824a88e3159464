"""Load a run's benchmark data and check everything later stages rely on, before any model is built.

`threedrs eval` and `threedrs train` call these first, so that no evaluation fails after inference, and no training
run after the model has loaded, for a reason the inputs already showed. Checked here (each failure is one line
naming the file and the record):
- the annotations (`threedrs.data.tasks` readers: fields, id types, eval/question types, unique ids, ScanRefer
  labels from the label table);
- every scene of the samples opens (frame folder, intrinsics, axis alignment), its frame list is made (and
  names only frames the export has, with valid poses) and both principal points lie inside their images;
- every object a grounding or captioning sample refers to exists in its scene, with a box of positive size;
- evaluation: the proposal table covers every scene of ScanRefer, Multi3DRefer and Scan2Cap, and a grounding
  scene keeps at least one proposal after zero-size boxes are dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from tqdm import tqdm

from threedrs.data.boxes import ProposalTable, read_box_table, scene_object_boxes
from threedrs.data.instances import SceneDataError
from threedrs.data.prompt_style import styled
from threedrs.data.sampling import FrameLists
from threedrs.data.scene import Scene
from threedrs.data.tasks import GROUNDING_TASKS, OBJECT_TASKS, Sample, benchmark_paths, load_benchmark

ObjectTable = dict[str, tuple[list[int], Tensor]]  # scene id -> (object ids, boxes [K, 6] float64)


@dataclass
class BenchmarkInputs:
    """One benchmark split, loaded and checked: its samples and the ground-truth objects of their scenes."""

    task: str
    samples: list[Sample]
    objects: ObjectTable


@dataclass
class EvaluationInputs:
    """Everything `threedrs eval` reads before inference: the proposal table and each benchmark's inputs."""

    proposals: ProposalTable
    benchmarks: list[BenchmarkInputs]


def check_scenes(root: Path, scene_ids: Sequence[str], axis_alignment: str, frame_lists: FrameLists | None,
                 progress: bool = False) -> None:
    """Each scene opens, gets its frame list (computed and kept now), whose frames all exist with valid poses,
    and its intrinsics fit its images."""
    # the bar shows only when checking takes over a second (making frame lists can); new lists are saved once
    with frame_lists.save_once() if frame_lists is not None else contextlib.nullcontext():
        for scene_id in tqdm(scene_ids, desc="check scenes", unit="scene", disable=not progress, delay=1.0):
            scene = Scene(root, scene_id, axis_alignment)
            if frame_lists is None:
                continue
            frame_ids = frame_lists(scene)
            for frame_id in dict.fromkeys(frame_ids):
                try:
                    scene.check_frame(frame_id)
                except SceneDataError as error:
                    raise SceneDataError(f"{frame_lists.path}: the frame list of {scene_id} names frame {frame_id}, "
                                         f"which the export cannot use ({error}); delete the file to sample again")
            scene.check_intrinsics(frame_ids[0])


def check_objects(samples: Sequence[Sample], objects: ObjectTable, where: Path) -> None:
    """Every target of a grounding / captioning sample is an object of its scene with a box of positive size."""
    for s in samples:
        if s.task not in OBJECT_TASKS:
            continue
        ids, boxes = objects[s.scene_id]
        for target in s.target_ids:
            if target not in ids:
                shown = f"{ids[:12]}{' ...' if len(ids) > 12 else ''}"
                raise SceneDataError(f"{where}: sample {s.id}: object {target} is not an annotated object of "
                                     f"{s.scene_id} (objects {shown})")
            if not bool((boxes[ids.index(target)][3:] > 0).all()):
                raise SceneDataError(f"{where}: sample {s.id}: object {target} of {s.scene_id} has a box of zero "
                                     f"size {boxes[ids.index(target)].tolist()}")


def check_proposals(task: str, scene_ids: Sequence[str], proposals: ProposalTable) -> None:
    """The proposal table covers the scenes of a grounding or captioning benchmark (grounding needs >= 1 box)."""
    if task not in OBJECT_TASKS:
        return
    missing = [s for s in scene_ids if s not in proposals.boxes]
    if missing:
        raise SceneDataError(f"{proposals.path}: no proposals for scene(s) {', '.join(missing[:10])}"
                             f"{' ...' if len(missing) > 10 else ''} of {task}")
    empty = [s for s in scene_ids if task in GROUNDING_TASKS and len(proposals.boxes[s]) == 0]
    if empty:
        raise SceneDataError(f"{proposals.path}: scene {empty[0]} has no usable proposal for {task} (grounding "
                             "chooses among them)")


def load_checked(data, tasks: Sequence[str], split: str, frame_lists: FrameLists | None, limit: int | None = None,
                 all_objects: bool = False, progress: bool = False, training: bool = False) -> list[BenchmarkInputs]:
    """Samples of each benchmark of `tasks` on `split` (the first `limit` of each), with every check of the module
    docstring except the proposal table; each scene's files are read once. data: the run's DataConfig (root,
    label_map, axis_alignment, prompts: their texts for training or evaluation, data/prompt_style.py). Objects are
    loaded for the grounding and captioning scenes, or for every scene with `all_objects` (training: the grounding
    head's candidates)."""
    root = Path(data.root)
    loaded = {task: styled(load_benchmark(root, task, split, data.label_map)[:limit], data.prompts, training)
              for task in tasks}
    scenes = sorted({s.scene_id for samples in loaded.values() for s in samples})
    check_scenes(root, scenes, data.axis_alignment, frame_lists, progress)
    with_objects = scenes if all_objects else sorted(
        {s.scene_id for task, samples in loaded.items() if task in OBJECT_TASKS for s in samples})
    objects = scene_object_boxes(root, with_objects, data.axis_alignment)
    inputs = []
    for task, samples in loaded.items():
        check_objects(samples, objects, benchmark_paths(root, task, split)[0])
        own = {s.scene_id for s in samples}
        inputs.append(BenchmarkInputs(task, samples, {k: v for k, v in objects.items() if k in own}))
    return inputs


def prepare_evaluation(cfg, frame_lists: FrameLists | None, progress: bool = False) -> EvaluationInputs:
    """All benchmarks of `cfg.eval` (split, limit, proposals), loaded and checked before any model call."""
    e = cfg.eval
    proposals = read_box_table(Path(cfg.data.root) / e.proposals)
    benchmarks = load_checked(cfg.data, e.benchmarks, e.split, frame_lists, e.limit, progress=progress)
    for inputs in benchmarks:
        check_proposals(inputs.task, sorted({s.scene_id for s in inputs.samples}), proposals)
    return EvaluationInputs(proposals, benchmarks)


def prepare_training(cfg, frame_lists: FrameLists | None, split: str = "train",
                     progress: bool = False) -> BenchmarkInputs:
    """The whole training set of `cfg.train.tasks` on `split`, loaded and checked before the model is built; its
    `objects` cover every scene (the candidates of the grounding head in training)."""
    benchmarks = load_checked(cfg.data, cfg.train.tasks, split, frame_lists, all_objects=True, progress=progress,
                              training=True)
    samples = [s for inputs in benchmarks for s in inputs.samples]
    if not samples:
        raise SceneDataError(f"{cfg.data.root}: no {split} samples for tasks {cfg.train.tasks}")
    objects = {scene: table for inputs in benchmarks for scene, table in inputs.objects.items()}
    return BenchmarkInputs("+".join(cfg.train.tasks), samples, objects)
