"""Feature cache: pooling to the student grid, file round trip, refusal of mismatching caches, damaged files."""

import errno
import json
import math
import os

import pytest
import torch
from safetensors import safe_open

from threedrs.config import load_config
from threedrs.provenance import fingerprint_files
from threedrs.teachers.cache_writer import CacheWriter, DiskFullError
from threedrs.teachers.cache import (
    CacheError,
    CacheMismatchError,
    CacheSpec,
    CorruptCacheFileError,
    FeatureCache,
    frame_lists_for,
    pool_to_grid,
)

SPEC = CacheSpec(teacher="geometry", weights_checksum="none", layer=-1, sampling="uniform", frames=3,
                 coverage_voxel=None, grid=(2, 3), channels=4)
FRAMES = ["00000", "00010", "00020"]


# ---------------------------------------------------------------------------------------------- pooling


def test_pool_4x6_to_2x3_equals_hand_means():
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    channel = torch.arange(2.0)
    tokens = (10 * rows[..., None] + cols[..., None] + 100 * channel)[None].repeat(2, 1, 1, 1)  # [2, 4, 6, 2]
    pooled, valid = pool_to_grid(tokens, (2, 3))
    # block (i, j) holds rows 2i, 2i+1 and columns 2j, 2j+1: mean = 10 (2i + 0.5) + (2j + 0.5) + 100 c
    for i in range(2):
        for j in range(3):
            for c in range(2):
                assert pooled[1, i, j, c].item() == pytest.approx(10 * (2 * i + 0.5) + (2 * j + 0.5) + 100 * c)
    assert pooled.shape == (2, 2, 3, 2) and valid.all()


def brute_force_adaptive(x, out_h, out_w):
    """Adaptive average pooling with bins [floor(i H / h), ceil((i + 1) H / h)), by loops."""
    frames, height, width, channels = x.shape
    out = torch.zeros(frames, out_h, out_w, channels, dtype=torch.float64)
    for i in range(out_h):
        r0, r1 = (i * height) // out_h, -((-(i + 1) * height) // out_h)
        for j in range(out_w):
            c0, c1 = (j * width) // out_w, -((-(j + 1) * width) // out_w)
            out[:, i, j] = x[:, r0:r1, c0:c1].double().mean(dim=(1, 2))
    return out


def test_pool_28x37_to_14x14_matches_adaptive_bins():
    x = torch.randn(2, 28, 37, 5, generator=torch.Generator().manual_seed(0))
    pooled, _ = pool_to_grid(x, (14, 14))
    torch.testing.assert_close(pooled.double(), brute_force_adaptive(x, 14, 14), rtol=1e-5, atol=1e-6)


def test_pool_ignores_invalid_tokens_and_keeps_any_valid():
    x = torch.tensor([[[[1.0], [3.0]], [[5.0], [float("nan")]]]])  # [1, 2, 2, 1]
    valid = torch.tensor([[[True, True], [True, False]]])
    pooled, out_valid = pool_to_grid(x, (1, 1), valid)
    assert pooled.item() == pytest.approx(3.0) and out_valid.item()  # mean of 1, 3, 5; NaN ignored
    pooled, out_valid = pool_to_grid(x, (1, 2), valid)  # right column: 3 valid, NaN invalid -> 3
    assert pooled[0, 0, :, 0].tolist() == pytest.approx([3.0, 3.0]) and out_valid.all()
    none = torch.zeros(1, 2, 2, dtype=torch.bool)
    pooled, out_valid = pool_to_grid(x, (1, 1), none)
    assert pooled.item() == 0.0 and not out_valid.any()


def test_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tokens: expected a float tensor"):
        pool_to_grid(torch.zeros(2, 3, 4), (1, 1))
    with pytest.raises(ValueError, match="grid"):
        pool_to_grid(torch.zeros(1, 2, 2, 3), (0, 1))
    with pytest.raises(ValueError, match="valid: expected a bool tensor"):
        pool_to_grid(torch.zeros(1, 2, 2, 3), (1, 1), torch.ones(1, 2, 2))


# ---------------------------------------------------------------------------------------------- files


def data_root(tmp_path):
    """A dataset root beside the cache folder ``tmp_path`` holding one frame file, the scene's only source."""
    root = tmp_path.parent / f"{tmp_path.name}-data"
    if not root.is_dir():
        root.mkdir()
        (root / "00000.jpg").write_bytes(b"a frame")
    return root


def write_scene_features(tmp_path, spec=SPEC, scene="scene0000_00"):
    writer = CacheWriter(tmp_path, spec, source_grid=(4, 6))
    tokens = torch.randn(3, 2, 3, 4, generator=torch.Generator().manual_seed(1)) * 10
    valid = torch.ones(3, 2, 3, dtype=torch.bool)
    valid[1, 0, 2] = False
    root = data_root(tmp_path)
    writer.write(scene, tokens, valid, FRAMES, (4, 6), fingerprint_files([root / "00000.jpg"], root))
    return writer, tokens, valid


def test_round_trip_keeps_values_mask_and_frame_ids(tmp_path):
    _, tokens, valid = write_scene_features(tmp_path)
    cache = FeatureCache(tmp_path, expected=SPEC)
    got = cache.load("scene0000_00", FRAMES)
    assert got.tokens.dtype == torch.float16 and got.tokens.shape == (3, 2, 3, 4)
    torch.testing.assert_close(got.tokens[valid].float(), tokens[valid], rtol=1e-3, atol=1e-3)  # float16 precision
    assert torch.equal(got.valid, valid) and got.tokens[1, 0, 2].abs().sum() == 0  # invalid stored as zeros
    assert got.frame_ids == FRAMES and got.source_grid == (4, 6) and cache.scene_ids() == ["scene0000_00"]
    with safe_open(str(cache.path("scene0000_00")), framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["frame_ids"]) == FRAMES and json.loads(meta["teacher"]) == "geometry"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["grid"] == [2, 3] and manifest["source_grid"] == [4, 6] and manifest["dtype"] == "float16"
    assert manifest["validity"] == "any" and "package_version" in manifest


def test_mismatching_cache_is_refused_naming_the_field(tmp_path):
    write_scene_features(tmp_path)
    other_layer = CacheSpec(**{**SPEC.__dict__, "layer": -3})
    with pytest.raises(CacheMismatchError, match="layer: recorded -1, this run has -3"):
        FeatureCache(tmp_path, expected=other_layer)
    other = CacheSpec(**{**SPEC.__dict__, "teacher": "vggt", "grid": (14, 14)})
    with pytest.raises(CacheMismatchError, match=r"teacher: recorded 'geometry', this run has 'vggt'.*grid"):
        CacheWriter(tmp_path, other, (4, 6))
    reader = CacheSpec(**{**SPEC.__dict__, "weights_checksum": None, "channels": None})  # None = not compared
    FeatureCache(tmp_path, expected=reader)
    with pytest.raises(CacheMismatchError, match="extracted for frames"):
        FeatureCache(tmp_path).load("scene0000_00", ["00000", "00010", "00030"])


def test_missing_cache_scene_and_grid(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature cache here"):
        FeatureCache(tmp_path)
    write_scene_features(tmp_path)
    with pytest.raises(FileNotFoundError, match="scene0099_00 is not in the feature cache"):
        FeatureCache(tmp_path).load("scene0099_00")
    cfg = load_config(None, [])
    with pytest.raises(CacheError, match="teacher.grid: set the student's token grid"):
        CacheSpec.from_config(cfg)


def test_temporary_file_is_ignored_and_replaced(tmp_path):
    writer = CacheWriter(tmp_path, SPEC, (4, 6))
    stale = tmp_path / "scene0000_00.safetensors.tmp-99999"
    stale.write_bytes(b"half a file")
    assert writer.status("scene0000_00", FRAMES, data_root(tmp_path)) == ("missing", [])
    assert FeatureCache(tmp_path).scene_ids() == []
    write_scene_features(tmp_path)
    assert not stale.exists() and writer.status("scene0000_00", FRAMES, data_root(tmp_path)) == ("done", [])


def test_truncated_file_is_detected_and_rewritten(tmp_path):
    writer, tokens, valid = write_scene_features(tmp_path)
    path = writer.path("scene0000_00")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CorruptCacheFileError, match="truncated or corrupt"):
        FeatureCache(tmp_path).load("scene0000_00")
    assert writer.status("scene0000_00", FRAMES, data_root(tmp_path)) == ("corrupt", [])
    path.write_bytes(data[:5])
    with pytest.raises(CorruptCacheFileError, match="no safetensors header"):
        FeatureCache(tmp_path).load("scene0000_00")
    root = data_root(tmp_path)
    writer.write("scene0000_00", tokens, valid, FRAMES, (4, 6), fingerprint_files([root / "00000.jpg"], root))
    assert path.stat().st_size == len(data) and writer.status("scene0000_00", FRAMES, root) == ("done", [])
    assert torch.equal(FeatureCache(tmp_path).load("scene0000_00").valid, valid)


def test_file_of_other_frames_is_not_silently_redone(tmp_path):
    writer, _, _ = write_scene_features(tmp_path)
    with pytest.raises(CacheMismatchError, match="delete the file"):
        writer.status("scene0000_00", ["00000", "00010", "00030"], data_root(tmp_path))


def test_disk_full_leaves_nothing_behind(tmp_path, monkeypatch):
    writer = CacheWriter(tmp_path, SPEC, (4, 6))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match="disk full while writing .*scene0000_00.safetensors"):
        write_scene_features(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["manifest.json"]


def test_bad_writes(tmp_path):
    writer = CacheWriter(tmp_path, SPEC, (4, 6))
    with pytest.raises(ValueError, match=r"tokens: expected a float tensor \[3, 2, 3, 4\]"):
        writer.write("s", torch.zeros(3, 2, 2, 4), torch.ones(3, 2, 2, dtype=torch.bool), FRAMES, (4, 6))
    with pytest.raises(ValueError, match="valid: expected a bool tensor"):
        writer.write("s", torch.zeros(3, 2, 3, 4), torch.ones(3, 2, 3), FRAMES, (4, 6))
    huge = torch.full((3, 2, 3, 4), 1e6)
    with pytest.raises(CacheError, match="float16 range"):
        writer.write("s", huge, torch.ones(3, 2, 3, dtype=torch.bool), FRAMES, (4, 6))
    with pytest.raises(ValueError, match="needs the teacher's weights_checksum"):
        CacheWriter(tmp_path, CacheSpec(**{**SPEC.__dict__, "weights_checksum": None}), (4, 6))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        FeatureCache(tmp_path)


def test_spec_from_config_and_frame_list_location(tmp_path):
    cfg = load_config(None, [f"teacher.cache_dir={tmp_path}", "teacher.grid=[14,14]", "data.frames=32",
                             "data.sampling=max_coverage", "teacher.layer=-3"])
    spec = CacheSpec.from_config(cfg, "abc", 2048)
    assert (spec.grid, spec.frames, spec.layer, spec.coverage_voxel) == ((14, 14), 32, -3, 0.1)
    assert frame_lists_for(cfg).path == tmp_path / "frame_lists.json"
    assert math.isclose(CacheSpec.from_config(load_config(None, ["teacher.grid=[2,2]"])).frames, 16)


def test_foreign_or_old_manifests_are_refused(tmp_path):
    write_scene_features(tmp_path)
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(CacheMismatchError, match="cache format version 0"):
        FeatureCache(tmp_path)
    manifest_path.write_text(json.dumps({"teacher": "vggt"}))
    with pytest.raises(CacheError, match="not a threedrs feature-cache manifest"):
        FeatureCache(tmp_path)
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "layer"}))
    with pytest.raises(CacheError, match="bad or missing 'layer'"):
        FeatureCache(tmp_path)


def test_training_compares_the_vggt_weights_only_where_they_are_and_hashes_them_once(tmp_path, monkeypatch):
    """Training reads only the feature cache: a VGGT weights file that is not on the machine is not compared, and
    one that kept the size and time `threedrs extract` recorded is not read again (VGGT-1B is 5 GB)."""
    import hashlib

    import threedrs.teachers.vggt as vggt
    from threedrs.teachers.base import weights_fingerprint
    from threedrs.training_data import open_training_cache

    weights = tmp_path / "vggt.pt"
    weights.write_bytes(b"aggregator weights " * 1000)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    cache_dir = tmp_path / "cache"
    spec = CacheSpec(**{**SPEC.__dict__, "teacher": "vggt", "weights_checksum": digest, "channels": 2048})
    CacheWriter(cache_dir, spec, (4, 6), weights_files=weights_fingerprint("vggt", str(weights)))
    assert json.loads((cache_dir / "manifest.json").read_text())["weights_files"] == {
        str(weights.resolve()): [weights.stat().st_size, weights.stat().st_mtime_ns]}

    def run(checkpoint):
        return load_config(None, [f"teacher.cache_dir={cache_dir}", "teacher.name=vggt", "teacher.grid=[2,3]",
                                  "data.frames=3", f"teacher.checkpoint={checkpoint}"])

    reads = []
    real_sha256 = vggt.file_sha256
    monkeypatch.setattr(vggt, "file_sha256", lambda path: reads.append(path) or real_sha256(path))
    assert open_training_cache(run(tmp_path / "elsewhere" / "vggt.pt")).spec == spec  # not here: not compared
    assert open_training_cache(run(weights)).spec == spec and reads == []  # recorded size and time: not read
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # copied: same bytes, another time
    assert open_training_cache(run(weights)).spec == spec and reads == [weights]
    weights.write_bytes(b"other weights " * 1000)
    with pytest.raises(CacheMismatchError, match=rf"weights_checksum: recorded '{digest[:10]}"):
        open_training_cache(run(weights))
    manifest = json.loads((cache_dir / "manifest.json").read_text())  # a cache of an older threedrs: hashed
    del manifest["weights_files"]
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match="weights_checksum"):
        open_training_cache(run(weights))


def test_old_cache_files_without_a_fingerprint_are_stale_as_a_whole(tmp_path):
    writer = CacheWriter(tmp_path, SPEC, (4, 6))
    writer.write("scene0000_00", torch.zeros(3, 2, 3, 4), torch.ones(3, 2, 3, dtype=torch.bool), FRAMES, (4, 6))
    assert writer.status("scene0000_00", FRAMES, data_root(tmp_path)) == ("stale", ["(no fingerprint of its frames)"])
