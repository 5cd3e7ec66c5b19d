"""`read_frames`: uniform and fixed-rate sampling, segment bounds, seeking, image folders, backends, bad files."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from benchmark_fixtures import FPS, frame_index, indexed_frames, truncated, video
from PIL import Image

import flowlens.data.decoders as decoders
import flowlens.data.decoders.pyav as pyav_decoder
from flowlens import Sample
from flowlens.data.failures import failure_kind, summary_line
from flowlens.data.sampling import plan_indices
from flowlens.data.video import read_frames
from flowlens.errors import FlowlensError, SampleError


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """40 indexed frames at 8 fps: 5 s."""
    return video(tmp_path_factory.mktemp("clip") / "clip.mp4", 40)


def test_uniform_frames_are_the_segment_middles(clip):
    out = read_frames(clip, 4)
    np.testing.assert_array_equal(out.indices, [5, 15, 25, 35])
    np.testing.assert_array_equal(frame_index(out.frames), out.indices)
    np.testing.assert_allclose(out.timestamps, out.indices / FPS)
    assert out.fps == FPS and out.total_frames == 40


def test_start_end_clip_to_the_segment(clip):
    out = read_frames(clip, 4, start=1.0, end=3.0)  # frames 8..23
    np.testing.assert_array_equal(out.indices, [10, 14, 18, 22])
    np.testing.assert_array_equal(frame_index(out.frames), [10, 14, 18, 22])
    np.testing.assert_allclose(out.timestamps, [1.25, 1.75, 2.25, 2.75])
    # bounds carried by the sample's metadata are honoured the same way; arguments win
    sample = Sample("s", str(clip), "q?", ["a", "b"], "A", {"start": 1.0, "end": 3.0})
    np.testing.assert_array_equal(read_frames(sample, 4).indices, [10, 14, 18, 22])
    np.testing.assert_array_equal(read_frames(sample, 2, start=0.0, end=1.0).indices, [2, 6])


def test_fixed_rate_sampling(clip):
    out = read_frames(clip, sample_fps=2)  # every 4th frame of 40
    np.testing.assert_array_equal(out.indices, np.arange(0, 40, 4))
    np.testing.assert_array_equal(frame_index(out.frames), out.indices)
    np.testing.assert_allclose(out.timestamps, np.arange(0, 5, 0.5))
    np.testing.assert_array_equal(
        read_frames(clip, sample_fps=2, start=1.0, end=3.0).indices, [8, 12, 16, 20]
    )
    np.testing.assert_array_equal(read_frames(clip, 3, sample_fps=2).indices, [4, 20, 32])  # n caps the count
    sample = Sample("s", str(clip), "q?", ["a"], "A", {"sample_fps": 1, "end": 2.0})
    np.testing.assert_array_equal(read_frames(sample).indices, [0, 8])


def test_plan_indices_rules():
    np.testing.assert_array_equal(plan_indices(30, 30.0, 3, start=0.1, end=0.4), [4, 7, 10])  # frames 3..11
    np.testing.assert_array_equal(plan_indices(10, 1.0, None, rate=3.0), np.arange(10))  # no frame twice
    with pytest.raises(SampleError, match="bad segment: end"):
        plan_indices(40, 8.0, 4, start=3.0, end=2.0)
    with pytest.raises(SampleError, match="bad segment.*holds no frames"):
        plan_indices(40, 8.0, 4, start=9.0)
    with pytest.raises(SampleError, match="too few frames.*in the segment"):
        plan_indices(40, 8.0, 8, start=1.0, end=1.5)


def test_long_video_is_read_by_seeking(tmp_path, monkeypatch):
    path = video(tmp_path / "long.mp4", 600, fps=25)
    seeks = []
    real_frames_from = pyav_decoder.PyAVDecoder._frames_from

    def counting(self, target):
        seeks.append(target)
        return real_frames_from(self, target)

    monkeypatch.setattr(pyav_decoder.PyAVDecoder, "_frames_from", counting)
    out = read_frames(path, 6, start=2.0)  # frames 50..599
    assert len(seeks) == 6  # one seek per far-apart frame, not a decode of all 600
    np.testing.assert_array_equal(out.indices, [95, 187, 279, 370, 462, 554])
    np.testing.assert_array_equal(frame_index(out.frames), out.indices)
    np.testing.assert_allclose(out.timestamps, out.indices / 25)


def test_image_folder_and_array_sources(tmp_path):
    folder = tmp_path / "clip_14"
    folder.mkdir()
    for i, frame in enumerate(indexed_frames(12)):
        Image.fromarray(frame).save(folder / f"{i + 1:05d}.png")
    sample = Sample("f", str(folder), "q?", ["a"], "A", {"fps": 3, "start": 1.0, "end": 3.0})
    out = read_frames(sample, 3)  # frames 3..8 at 3 fps
    np.testing.assert_array_equal(out.indices, [4, 6, 8])
    np.testing.assert_array_equal(frame_index(out.frames), [4, 6, 8])
    np.testing.assert_allclose(out.timestamps, [4 / 3, 2.0, 8 / 3])
    array = indexed_frames(10)
    out = read_frames(array, 2, fps=2.0)
    np.testing.assert_array_equal(out.frames, array[[2, 7]])
    np.testing.assert_allclose(out.timestamps, [1.0, 3.5])


def test_bad_videos_fail_with_their_kind(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01 not a video" * 50)
    video(tmp_path / "short.mp4", 3)
    truncated(tmp_path / "cut.mp4", 64)
    (tmp_path / "no_images").mkdir()
    cases = {
        "missing.mp4": ("video not found", "video not found"),
        "empty.mp4": ("0 bytes", "empty video"),
        "junk.mp4": ("cannot decode", "cannot decode"),
        "cut.mp4": ("cannot decode.*truncated", "cannot decode"),
        "short.mp4": ("3 frames, fewer than the 8", "too few frames"),
        "no_images": ("no frame images", "empty video"),
    }
    reasons = []
    for name, (phrase, kind) in cases.items():
        with pytest.raises(SampleError, match=phrase) as caught:
            read_frames(tmp_path / name, 8)
        assert failure_kind(str(caught.value)) == kind, name
        reasons.append(str(caught.value))
    with pytest.raises(SampleError, match="bad segment") as caught:
        read_frames(tmp_path / "short.mp4", 1, start=5.0)
    assert failure_kind(str(caught.value)) == "bad segment"
    assert summary_line(reasons) == (
        "failures by kind: empty video 2, cannot decode 2, video not found 1, too few frames 1"
    )


def test_webm_without_a_stored_frame_count(tmp_path):
    import av

    path = tmp_path / "clip.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for frame in indexed_frames(12):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    out = read_frames(path, 3)
    assert out.total_frames == 12
    np.testing.assert_array_equal(frame_index(out.frames), [2, 6, 10])


def test_backend_missing_or_unknown_is_one_clear_error(clip, monkeypatch):
    real_import = importlib.import_module

    def no_decord(name, *args):
        if name == "decord":
            raise ImportError("No module named 'decord'")
        return real_import(name, *args)

    monkeypatch.setattr(decoders.importlib, "import_module", no_decord)
    with pytest.raises(FlowlensError, match="'decord' is not installed.*pip install decord"):
        read_frames(clip, 4, backend="decord")
    with pytest.raises(FlowlensError, match="unknown video backend 'opencv'"):
        read_frames(clip, 4, backend="opencv")


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
def test_optional_backends_agree_with_pyav(tmp_path, backend):
    pytest.importorskip(backend)
    path = video(tmp_path / "wide.mp4", 40)  # 64 px wide: decord mis-sizes narrower frames
    ours = read_frames(path, 4, start=1.0, end=4.0)
    theirs = read_frames(path, 4, start=1.0, end=4.0, backend=backend)
    np.testing.assert_array_equal(theirs.indices, ours.indices)
    np.testing.assert_array_equal(frame_index(theirs.frames), ours.indices)
    np.testing.assert_allclose(theirs.timestamps, ours.timestamps, atol=1e-3)
