"""`extract` and `probe_teacher` end to end on a tiny hand-made dataset with the weight-free teachers."""

import argparse
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from scene_files import write_scene

from threedrs.cli import build_parser
from threedrs.config import ConfigError, load_config
from threedrs.data.instances import SceneDataError
from threedrs.data.scene import Scene
from threedrs.extract import extract, main_extract
from threedrs.locking import FileLock
from threedrs.probe import main_probe, probe_teacher
from threedrs.teachers.base import build_teacher
from threedrs.teachers.cache import CacheError, CacheMismatchError, FeatureCache, frame_lists_for
from threedrs.teachers.geometry import GeometryTeacher

TRAIN = ["scene0000_00", "scene0001_00"]
VAL = ["scene0002_00"]


@pytest.fixture()
def dataset(tmp_path):
    """Three scenes of 4 frames (28 x 56 px, 2 x 4 geometry tokens of 14 px); frame k shifted 2.83 k + 0.01 m."""
    root = tmp_path / "data"
    for n, scene_id in enumerate(TRAIN + VAL):
        poses = []
        for k in range(4):
            pose = np.eye(4)
            pose[0, 3] = 2.8 * k + 0.01 + 0.02 * k
            pose[1, 3] = 0.37 * n
            poses.append(pose)
        write_scene(root, scene_id, poses=poses, size=(28, 56))
    (root / "metadata" / "scannetv2_train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "metadata" / "scannetv2_val.txt").write_text("\n".join(VAL) + "\n")
    return root


def overrides(root, *extra):
    """`key=value` settings of the tests' runs: geometry teacher, 3 frames, pooled to 1 x 2 tokens."""
    out = root.parent
    return [f"data.root={root}", "data.frames=3", "teacher.name=geometry", "teacher.channels=16",
            "teacher.grid=[1,2]", f"teacher.cache_dir={out / 'cache'}", f"output_dir={out / 'run'}", *extra]


def config(root, *extra):
    return load_config(None, overrides(root, *extra))


@pytest.fixture()
def calls(monkeypatch):
    """Count GeometryTeacher.encode_with_validity calls; `calls.fail_on` = the call that raises (simulated crash)."""
    original = GeometryTeacher.encode_with_validity

    class Counter:
        count = 0
        fail_on = None

    def counting(self, images, frames=None):
        Counter.count += 1
        if Counter.count == Counter.fail_on:
            raise RuntimeError("simulated crash")
        return original(self, images, frames)

    monkeypatch.setattr(GeometryTeacher, "encode_with_validity", counting)
    return Counter


def test_extract_writes_pooled_features_of_the_shared_frames(dataset):
    cfg = config(dataset)
    summary = extract(cfg)
    assert summary.written == TRAIN + VAL and summary.skipped == [] and summary.world == 1
    cache = FeatureCache(cfg.teacher.cache_dir)
    frame_lists = json.loads((dataset.parent / "cache" / "frame_lists.json").read_text())
    assert frame_lists["rule"] == "uniform" and frame_lists["frames"] == 3
    manifest = json.loads((dataset.parent / "cache" / "manifest.json").read_text())
    assert (manifest["teacher"], manifest["grid"], manifest["source_grid"], manifest["channels"]) == \
        ("geometry", [1, 2], [2, 4], 16)
    # independent reference: the teacher on the same frames, each 2 x 2 block of the 2 x 4 grid averaged by hand
    scene = Scene(dataset, "scene0001_00")
    ids = frame_lists["scenes"]["scene0001_00"]
    assert ids == [scene.frame_ids[i] for i in (0, 1, 3)]  # linspace(0, 3, 3) floored
    batch = scene.load_frames(ids)
    raw = build_teacher("geometry", channels=16).encode(batch.images, batch)
    expected = torch.stack([raw[:, :, :2].mean(dim=(1, 2)), raw[:, :, 2:].mean(dim=(1, 2))], dim=1)[:, None]
    got = cache.load("scene0001_00", ids)
    torch.testing.assert_close(got.tokens.float(), expected, rtol=2e-3, atol=2e-3)
    assert got.valid.all() and got.frame_ids == ids


def test_resume_after_interruption_redoes_only_what_is_missing(dataset, calls):
    cfg = config(dataset)
    calls.fail_on = 2  # the teacher crashes on the second scene
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(cfg)
    assert FeatureCache(cfg.teacher.cache_dir).scene_ids() == TRAIN[:1]
    calls.count, calls.fail_on = 0, None
    summary = extract(cfg)
    assert calls.count == 2 and summary.skipped == TRAIN[:1] and summary.written == TRAIN[1:] + VAL
    calls.count = 0
    assert extract(cfg).written == [] and calls.count == 0


def test_leftover_temporary_and_truncated_files_are_redone(dataset, calls):
    cfg = config(dataset)
    extract(cfg)
    cache_dir = dataset.parent / "cache"
    (cache_dir / "scene0000_00.safetensors").unlink()
    (cache_dir / "scene0000_00.safetensors.tmp-12345").write_bytes(b"interrupted")
    truncated = cache_dir / "scene0002_00.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])
    calls.count = 0
    summary = extract(cfg)
    assert calls.count == 2 and sorted(summary.written) == ["scene0000_00", "scene0002_00"]
    assert summary.rewritten == ["scene0002_00"] and not list(cache_dir.glob("*.tmp-*"))
    assert FeatureCache(cache_dir).load("scene0002_00").tokens.shape == (3, 1, 2, 16)


def test_ranks_share_the_scenes_and_only_rank_zero_writes_the_manifest(dataset, monkeypatch):
    cfg = config(dataset)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "1")
    summary = extract(cfg)
    assert (summary.rank, summary.world, summary.written) == (1, 2, ["scene0001_00"])
    assert not (dataset.parent / "cache" / "manifest.json").exists()
    monkeypatch.setenv("RANK", "0")
    assert extract(cfg).written == ["scene0000_00", "scene0002_00"]
    assert FeatureCache(cfg.teacher.cache_dir).scene_ids() == TRAIN + VAL
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="need 0 <= RANK < WORLD_SIZE"):
        extract(cfg)


def test_mismatching_cache_and_bad_options_are_refused(dataset):
    extract(config(dataset))
    with pytest.raises(CacheMismatchError, match="channels: recorded 16, this run has 32"):
        extract(config(dataset, "teacher.channels=32"))
    with pytest.raises(CacheMismatchError, match=r"grid: recorded \[1, 2\], this run has \[2, 2\]"):
        extract(config(dataset, "teacher.grid=[2,2]"))
    with pytest.raises(ConfigError, match="cannot be built with teacher.layer=-2"):
        extract(config(dataset, "teacher.layer=-2", "teacher.cache_dir=elsewhere"))
    with pytest.raises(CacheError, match="teacher.grid: set the student's token grid"):
        extract(config(dataset, "teacher.grid=null"))


def test_scene_subset_batches_and_multi_view_warning(dataset, calls, monkeypatch, capsys):
    cfg = config(dataset, "teacher.batch_frames=1")
    monkeypatch.setattr(GeometryTeacher, "multi_view", True)
    with pytest.warns(UserWarning, match="multi-view but sees the 3 frames of a scene in batches of 1"):
        # the arguments as the command line parses them (every option of `threedrs extract` present)
        empty = dataset.parent / "empty.yaml"
        empty.write_text("{}\n")
        main_extract(build_parser().parse_args(["extract", str(empty), *overrides(dataset, "teacher.batch_frames=1"),
                                                "--scenes", "scene0002_00"]))
    assert calls.count == 3  # one call per frame
    assert "1 extracted" in capsys.readouterr().out
    assert FeatureCache(cfg.teacher.cache_dir).scene_ids() == ["scene0002_00"]
    with pytest.raises(SceneDataError, match="scenes not found: scene0404_00"):
        extract(cfg, ["scene0404_00"])


def test_probe_reads_the_cache_and_ranks_teachers(dataset, capsys):
    cfg = config(dataset, "data.split=train", "teacher.grid=[2,4]")  # the native grid: no pooling
    extract(cfg)
    oracle = probe_teacher(cfg)
    assert [s.source for s in oracle.scenes] == ["cache", "cache"] and [s.scene_id for s in oracle.scenes] == TRAIN
    assert all(s.pairs > 0 for s in oracle.scenes) and oracle.summary.sample_mean > 0.9
    baseline = probe_teacher(config(dataset, "data.split=train", "teacher.grid=[2,4]", "teacher.name=appearance"))
    assert [s.source for s in baseline.scenes] == ["computed", "computed"]  # the cache holds geometry features
    assert baseline.summary.sample_mean < oracle.summary.sample_mean - 0.3
    saved = json.loads((dataset.parent / "run" / "probe_geometry.json").read_text())
    assert saved["scenes"][0]["score"] == pytest.approx(oracle.scenes[0].score)
    assert "| scene0000_00 |" in oracle.table() and "ORACLE" in oracle.table()
    main_probe(argparse.Namespace(config=None, overrides=overrides(dataset, "teacher.grid=[2,4]"),
                                  scenes="scene0002_00"))
    assert "| scene0002_00 |" in capsys.readouterr().out


def test_on_synthrooms_the_oracle_beats_appearance(tmp_path):
    from threedrs.config import SynthConfig
    from threedrs.data.synthetic import generate

    generate(SynthConfig(scenes=2, frames=8, width=224, height=168, seed=1), tmp_path / "synth")
    means = {}
    for name in ("geometry", "appearance"):
        cfg = load_config(None, [f"data.root={tmp_path / 'synth'}", "data.frames=8", "data.split=val",
                                 f"teacher.name={name}", "teacher.grid=[14,14]", f"output_dir={tmp_path / 'run'}",
                                 f"teacher.cache_dir={tmp_path / name}"])
        assert len(extract(cfg).written) == 2  # one train and one val room
        result = probe_teacher(cfg)
        assert [s.source for s in result.scenes] == ["cache"] and result.scenes[0].pairs > 10
        means[name] = result.summary.sample_mean
    # the oracle is a function of the world point only (its tokens' mean points still differ a little between
    # views); SynthRooms' textured walls and floors keep appearance clearly below it
    assert means["geometry"] > 0.9 and means["appearance"] < means["geometry"] - 0.05, means


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_extract_on_gpu_with_autocast_matches_cpu(dataset, monkeypatch):
    gpu = {}
    for name in ("geometry", "appearance"):  # cuda:0, bf16 autocast (teacher.dtype=auto)
        cfg = config(dataset, f"teacher.name={name}", f"teacher.cache_dir={dataset.parent / 'gpu' / name}")
        extract(cfg)
        gpu[name] = FeatureCache(cfg.teacher.cache_dir).load("scene0000_00").tokens.float()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("geometry", "appearance"):
        cfg = config(dataset, f"teacher.name={name}", f"teacher.cache_dir={dataset.parent / 'cpu' / name}")
        extract(cfg)
        cpu = FeatureCache(cfg.teacher.cache_dir).load("scene0000_00").tokens.float()
        torch.testing.assert_close(gpu[name], cpu, rtol=0.02, atol=0.02)


def test_a_changed_frame_makes_its_scene_stale_and_verify_sees_content(dataset, calls):
    cfg = config(dataset)
    extract(cfg)
    png = dataset / "scannet" / "posed_images" / "scene0001_00" / "00010.png"
    png.write_bytes(png.read_bytes())  # same bytes, new modification time
    calls.count = 0
    summary = extract(cfg)
    assert summary.stale == ["scene0001_00"] and summary.written == ["scene0001_00"] and calls.count == 1
    # with --verify the fingerprint is the content: a new modification time alone is not a change
    extract(cfg, overwrite=True, verify=True)
    stat = png.stat()
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls.count = 0
    assert extract(cfg, verify=True).written == [] and calls.count == 0
    pose = png.with_suffix(".txt")
    before = pose.stat()
    text = pose.read_text()
    pose.write_text(text.replace("0.000000", "0.000001", 1))  # content changed; size and time put back below
    os.utime(pose, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert pose.stat().st_size == before.st_size
    assert extract(cfg).written == [] and extract(cfg, verify=True).stale == ["scene0001_00"]


def test_verify_on_a_cache_extracted_without_it_hashes_the_frames_instead_of_extracting_again(dataset, calls,
                                                                                                  capsys):
    cfg = config(dataset)
    extract(cfg)
    calls.count = 0
    summary = extract(cfg, verify=True)
    assert summary.written == [] and summary.stale == [] and calls.count == 0
    assert summary.fingerprinted == TRAIN + VAL and summary.skipped == TRAIN + VAL
    assert "3 fingerprinted by content" in summary.describe() and "changed" not in capsys.readouterr().err
    cache = FeatureCache(dataset.parent / "cache")
    sources = cache.sources("scene0001_00")
    png = dataset / "scannet" / "posed_images" / "scene0001_00" / "00010.png"
    assert sources["scannet/posed_images/scene0001_00/00010.png"][2] == hashlib.sha256(png.read_bytes()).hexdigest()
    assert all(len(entry) == 3 for entry in sources.values())
    assert cache.load("scene0001_00").tokens.shape == (3, 1, 2, 16)  # the features are kept
    assert extract(cfg, verify=True).fingerprinted == []  # recorded now: nothing to add
    before = png.stat()
    data = bytearray(png.read_bytes())
    data[-1] ^= 1  # content changed; size and time put back: only the recorded sha256 can tell
    png.write_bytes(bytes(data))
    os.utime(png, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert extract(cfg).written == [] and extract(cfg, verify=True).stale == ["scene0001_00"]


def test_verify_hashes_each_source_file_of_a_stale_scene_once(dataset, monkeypatch):
    import threedrs.provenance as provenance

    cfg = config(dataset)
    extract(cfg, verify=True)
    pose = dataset / "scannet" / "posed_images" / "scene0001_00" / "00010.txt"
    pose.write_text(pose.read_text() + "\n")
    reads = []
    real_sha256 = provenance.file_sha256
    monkeypatch.setattr(provenance, "file_sha256", lambda path: reads.append(path) or real_sha256(path))
    summary = extract(cfg, ["scene0001_00"], verify=True)
    assert summary.stale == ["scene0001_00"]
    files = Scene(dataset, "scene0001_00").source_files(frame_lists_for(cfg)("scene0001_00"))
    assert len(files) > 3 and sorted(reads) == sorted(files)  # checked and recorded with one read each


def test_overwrite_starts_the_cache_afresh(dataset):
    extract(config(dataset))
    with pytest.raises(CacheMismatchError, match="--overwrite"):
        extract(config(dataset, "teacher.channels=32"))
    summary = extract(config(dataset, "teacher.channels=32"), overwrite=True)
    assert summary.written == TRAIN + VAL and FeatureCache(dataset.parent / "cache").spec.channels == 32


def test_overwrite_deletes_nothing_from_a_folder_that_is_not_a_cache(dataset):
    folder = dataset.parent / "cache"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"someone's weights")
    with pytest.raises(CacheError, match=rf"{folder}: not a threedrs feature cache .*deletes nothing"):
        extract(config(dataset), overwrite=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "another program's"}))
    with pytest.raises(CacheError, match=r"manifest.json is another program's"):
        extract(config(dataset), overwrite=True)
    assert (folder / "model.safetensors").read_bytes() == b"someone's weights"
    (folder / "model.safetensors").unlink()
    (folder / "manifest.json").unlink()
    (folder / "frame_lists.json").write_text("{}")  # training without a teacher writes only its frame lists here
    assert extract(config(dataset), overwrite=True).written == TRAIN + VAL


def test_a_live_writers_temporary_file_is_left_alone_and_its_scene_skipped(dataset, capsys):
    cfg = config(dataset)
    cache = dataset.parent / "cache"
    live = cache / "scene0001_00.safetensors.tmp-4242"
    live.parent.mkdir(parents=True)
    live.write_bytes(b"being written")
    with FileLock(cache / ".locks" / "scene0001_00.lock", "another extraction"):
        summary = extract(cfg)
        assert summary.busy == ["scene0001_00"] and summary.written == ["scene0000_00", "scene0002_00"]
        assert live.read_bytes() == b"being written" and "left to another process" in summary.describe()
    summary = extract(cfg)  # the writer is gone: its scene is extracted and its temporary file removed
    assert summary.written == ["scene0001_00"] and not live.exists()


@pytest.mark.slow
def test_two_extractions_at_once_share_the_cache(dataset):
    import subprocess
    import sys

    code = ("import sys; from threedrs.config import load_config; from threedrs.extract import extract; "
            "s = extract(load_config(None, sys.argv[1:])); print(len(s.written), len(s.skipped), len(s.busy))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code, *overrides(dataset)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    counts = [tuple(map(int, out.split()[-3:])) for out, _ in outs]
    assert sum(c[0] for c in counts) == 3  # every scene extracted exactly once between them
    assert FeatureCache(dataset.parent / "cache").scene_ids() == TRAIN + VAL
    assert not list((dataset.parent / "cache").glob("*.tmp-*"))


def test_a_damaged_frame_lists_file_is_named(dataset):
    cfg = config(dataset)
    extract(cfg)
    lists = dataset.parent / "cache" / "frame_lists.json"
    lists.write_text('{"rule": "uniform", "frames": 3')
    with pytest.raises(SceneDataError, match=r"frame_lists.json: not valid JSON .* delete it"):
        extract(cfg)
    lists.write_text(json.dumps({"rule": "uniform", "frames": 3, "voxel": 0.1, "scenes": {"scene0000_00": 5}}))
    with pytest.raises(SceneDataError, match=r"frame_lists.json: scene 'scene0000_00' must map to a non-empty list"):
        extract(cfg)
