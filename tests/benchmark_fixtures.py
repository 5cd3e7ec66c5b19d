"""Tiny benchmark trees in each benchmark's published layout, with generated videos whose frames encode their index.

Records are copied from the released files (TVBench `json/action_sequence.json` and
`action_count.json`, TempCompass `questions/multi-choice.json`, NExT-QA `val.csv`, Video-MME's
`output_test_template.json`, TOMATO `data/rotation.json`), with segment bounds shortened to fit the
generated clips; the MVBench records follow the same fields with made-up content.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pandas as pd
from PIL import Image
from test_data import write_mp4

FPS = 8


def indexed_frames(n: int, height: int = 32, width: int = 64) -> np.ndarray:
    """Grey frames encoding their index i in base 16: left half i % 16, right top (i // 16) % 16, right bottom i // 256.

    Each digit d is drawn as the level 16 * d + 8, which H.264 keeps within a few levels.
    """
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        frames[i, :, : width // 2] = 16 * (i % 16) + 8
        frames[i, : height // 2, width // 2 :] = 16 * (i // 16 % 16) + 8
        frames[i, height // 2 :, width // 2 :] = 16 * (i // 256 % 16) + 8
    return frames


def frame_index(frames: np.ndarray) -> np.ndarray:
    """The index each decoded frame of `indexed_frames` encodes."""
    h, w = frames.shape[1] // 2, frames.shape[2] // 2

    def digit(block: np.ndarray) -> np.ndarray:
        return np.floor(block.mean(axis=(1, 2, 3)) / 16).astype(int)

    return digit(frames[:, :, :w]) + 16 * digit(frames[:, :h, w:]) + 256 * digit(frames[:, h:, w:])


def video(path: Path, n: int = 24, fps: int = FPS, faststart: bool = False) -> Path:
    """An H.264 mp4 of `n` indexed frames (moov atom first when `faststart`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not faststart:
        write_mp4(path, indexed_frames(n), fps=fps)
        return path
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = 32, 64
        stream.pix_fmt = "yuv420p"
        for frame in indexed_frames(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def truncated(path: Path, n: int = 64) -> Path:
    """A faststart mp4 cut in half: its header promises `n` frames, far fewer decode."""
    video(path, n, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_json(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))
    return path


# -- TVBench -------------------------------------------------------------------------------
TVBENCH_SEQUENCE = [  # json/action_sequence.json, as released
    {
        "video": "6H78U.mp4",
        "question": "What did the person do first?",
        "answer": "Put down the blanket.",
        "candidates": ["Put down the blanket.", "Took the towel."],
        "question_id": "Sequence_T3_5",
        "start": 1.0,
        "end": 2.5,
    },
    {
        "video": "OY3LS.mp4",
        "question": "What did the person do first?",
        "answer": "Opened the laptop.",
        "candidates": ["Threw the clothes.", "Opened the laptop."],
        "question_id": "Sequence_T3_50",
        "start": 0.5,
        "end": 2.0,
    },
]
COUNT_QUESTION = "How many containers did the person try to cover?"


def count_record(name: str, answer: str = "5") -> dict:
    """A json/action_count.json record (TVBench)."""
    return {"video": name, "question": COUNT_QUESTION, "candidates": ["2", "3", "5", "4"], "answer": answer}


def tvbench(root: Path, bad: bool = False) -> Path:
    """TVBench with action_sequence (one video missing) and action_count; `bad` adds every kind of bad input."""
    write_json(root / "json" / "action_sequence.json", TVBENCH_SEQUENCE)
    video(root / "video" / "action_sequence" / "6H78U.mp4", 24)
    counts = [count_record("video_2126.mp4"), count_record("video_7084.mp4", "3")]
    video(root / "video" / "action_count" / "video_2126.mp4", 16)
    video(root / "video" / "action_count" / "video_7084.mp4", 12)
    if bad:
        folder = root / "video" / "action_count"
        (folder / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 20)
        (folder / "empty.mp4").write_bytes(b"")
        video(folder / "short.mp4", 2)
        truncated(folder / "truncated.mp4")
        counts += [count_record(n) for n in ("corrupt.mp4", "empty.mp4", "short.mp4", "truncated.mp4")]
        counts.append({"video": "video_2126.mp4", "question": COUNT_QUESTION, "answer": "5"})  # no candidates
    write_json(root / "json" / "action_count.json", counts)
    return root


# -- MVBench -------------------------------------------------------------------------------
def mvbench(root: Path) -> Path:
    """MVBench with action_antonym (ssv2 webm path) and episodic_reasoning (a TVQA frame folder, bounds)."""
    write_json(
        root / "json" / "action_antonym.json",
        [
            {
                "video": "166583.webm",
                "question": "What is the action performed by the person in the video?",
                "candidates": ["Not sure", "Scooping something up with something", "Pouring something"],
                "answer": "Scooping something up with something",
            }
        ],
    )
    write_json(
        root / "json" / "episodic_reasoning.json",
        [
            {
                "video": "castle_s07e04_seg02_clip_14",
                "question": "What did Beckett do after she picked up the phone?",
                "candidates": ["She hung up.", "She answered it.", "She threw it.", "She ran.", "She sat."],
                "answer": "She answered it.",
                "start": 1.0,
                "end": 3.0,
            }
        ],
    )
    frames = root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s07e04_seg02_clip_14"
    frames.mkdir(parents=True)
    for i, frame in enumerate(indexed_frames(12)):
        Image.fromarray(frame).save(frames / f"{i + 1:05d}.png")
    return root


# -- TempCompass ---------------------------------------------------------------------------
def tempcompass(root: Path) -> Path:
    """questions/multi-choice.json with one video, two aspects; videos/<id>.mp4."""
    write_json(
        root / "questions" / "multi-choice.json",
        {
            "1034419625": {
                "action": [
                    {
                        "question": "What is the man doing in the video?\nA. dunking a basketball\n"
                        "B. dribbling a basketball\nC. passing a basketball",
                        "answer": "A. dunking a basketball",
                    }
                ],
                "direction": [
                    {
                        "question": "From the camera's point of view, in which direction is the man moving?\n"
                        "A. away from the camera\nB. towards the camera\nC. from left to right",
                        "answer": "C. from left to right",
                    },
                    {"question": "What is the direction of the man?", "answer": "B. left"},  # no option lines
                ],
            }
        },
    )
    video(root / "videos" / "1034419625.mp4", 16)
    return root


# -- NExT-QA -------------------------------------------------------------------------------
NEXTQA_CSV = """video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4
4010069381,369,640,480,how do the two man play the instrument,0,6,CH,roll the handle,tap their feet,strum the string,hit with sticks,pat with hand
4882821564,2697,640,480,why did the boy pick up one present from the group of them and move to the sofa,2,1,CW,share with the girl,approach lady sitting there,unwrap it,playing with toy train,gesture something
2834146886,1881,496,370,what does the white dog do after going to the cushion,7,8,TN,drink again,shake its body,smells the black dog,wagging tail,touch lady in blue stripes
"""


def nextqa(root: Path) -> Path:
    """nextqa/val.csv (two good rows, one with answer index 7) and the VidOR map; one video mapped, one flat."""
    (root / "nextqa").mkdir(parents=True)
    (root / "nextqa" / "val.csv").write_text(NEXTQA_CSV)
    write_json(root / "nextqa" / "map_vid_vidorID.json", {"4010069381": "1164/4010069381"})
    video(root / "NExTVideo" / "1164" / "4010069381.mp4", 16)
    video(root / "NExTVideo" / "4882821564.mp4", 16)
    return root


# -- Video-MME -----------------------------------------------------------------------------
VIDEOMME_ROW = {
    "video_id": "001",
    "duration": "short",
    "domain": "Knowledge",
    "sub_category": "Humanity & History",
    "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
    "videoID": "fFjv93ACGo8",
    "question_id": "001-2",
    "task_type": "Attribute Perception",
    "question": "What is Moina Michael wearing in the video?",
    "options": ["A. Black shirts.", "B. Blue shirts.", "C. Red skirts.", "D. Brown hat."],
    "answer": "D",
}


def videomme(root: Path, as_json: bool = False) -> Path:
    """The Hub parquet (or the official JSON) with one question; the video as data/<videoID>.mkv."""
    if as_json:
        row = VIDEOMME_ROW
        write_json(
            root / "videomme.json",
            [
                {
                    "video_id": row["video_id"],
                    "duration_category": row["duration"],
                    "video_category": row["domain"],
                    "video_subcategory": row["sub_category"],
                    "url": row["url"],
                    "questions": [
                        {
                            "question_id": row["question_id"],
                            "task_type": row["task_type"],
                            "question": row["question"],
                            "choices": row["options"],
                            "answer": row["answer"],
                        }
                    ],
                }
            ],
        )
    else:
        (root / "videomme").mkdir(parents=True)
        bad = {**VIDEOMME_ROW, "question_id": "001-3", "options": ["Black.", "B. Blue."]}
        pd.DataFrame([VIDEOMME_ROW, bad]).to_parquet(root / "videomme" / "test-00000-of-00001.parquet")
    video(root / "data" / "fFjv93ACGo8.mkv", 16)
    return root


# -- TOMATO --------------------------------------------------------------------------------
TOMATO_RECORD = {
    "question": "Which direction(s) does the person's hand rotate in?",
    "options": [
        "No rotation.",
        "Clockwise then counter-clockwise.",
        "Counter-clockwise then clockwise.",
        "Clockwise throughout.",
        "Counter-clockwise throughout.",
    ],
    "answer": 3,
    "key": "0215-06",
    "video_source_url": "",
    "motion_type": "rotation",
    "variation": {"counterfactual": 0, "composite": 0, "zoom": 1, "first_person": 0},
    "demonstration_type": "human",
    "note": "Eason rotating hand clockwise",
}


def tomato(root: Path) -> Path:
    """data/rotation.json with the released record "0" and a broken one; videos/human/0215-06.mp4."""
    write_json(root / "data" / "rotation.json", {"0": TOMATO_RECORD, "1": {**TOMATO_RECORD, "answer": 9}})
    video(root / "videos" / "human" / "0215-06.mp4", 16)
    return root
