"""Samples and video decoding."""

from __future__ import annotations

import av
import numpy as np
import pytest

from flowlens import Sample
from flowlens.data.video import read_frames, uniform_indices
from flowlens.errors import SampleError


def write_mp4(path, frames: np.ndarray, fps: int = 8) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_answer_letter_from_letter_text_or_parenthesised():
    s = Sample("a", "x.mp4", "q", ["left", "right"], "right")
    assert s.answer_letter == "B"
    assert Sample("a", "x.mp4", "q", ["left", "right"], "(A)").answer_letter == "A"
    assert Sample("a", "x.mp4", "q", ["left", "right"], "B").answer_letter == "B"
    assert Sample("a", "x.mp4", "q", ["left", "right"]).answer_letter is None


def test_bad_samples_say_why():
    with pytest.raises(SampleError, match="not one of the options"):
        Sample("a", "x.mp4", "q", ["left", "right"], "up").validate()
    with pytest.raises(SampleError, match="no options"):
        Sample("a", "x.mp4", "q", [], None).validate()
    with pytest.raises(SampleError, match="empty question"):
        Sample("a", "x.mp4", " ", ["x"], "A").validate()


def test_uniform_indices_are_segment_middles():
    np.testing.assert_array_equal(uniform_indices(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
    with pytest.raises(SampleError, match="fewer than"):
        uniform_indices(4, 8)


def test_read_frames_from_mp4(tmp_path):
    frames = np.zeros((16, 32, 48, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(16)[:, None, None] * 15  # red grows over time
    write_mp4(tmp_path / "v.mp4", frames)
    out = read_frames(str(tmp_path / "v.mp4"), 4)
    assert out.frames.shape == (4, 32, 48, 3) and out.total_frames == 16
    np.testing.assert_array_equal(out.indices, [2, 6, 10, 14])
    np.testing.assert_allclose(out.timestamps, out.indices / 8)
    red = out.frames[..., 0].mean(axis=(1, 2))
    assert np.all(np.diff(red) > 30)  # the right frames, in order


def test_missing_and_corrupt_videos(tmp_path):
    with pytest.raises(SampleError, match="not found"):
        read_frames(str(tmp_path / "none.mp4"), 4)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(SampleError, match="cannot decode"):
        read_frames(str(tmp_path / "bad.mp4"), 4)
