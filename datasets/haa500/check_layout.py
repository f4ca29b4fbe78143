"""Check an HAA500 tree against the official layout.

    python datasets/haa500/check_layout.py /data/haa500 [--decode]

Expects ``root/video/<class>/<class>_<NNN>.mp4`` with NNN 000-019 for each of 500 classes
(000-015 train, 016 val, 017-019 test). Reports the class count, classes with missing numbers,
files that do not follow the naming, and with ``--decode`` clips that PyAV cannot read (with
their frame counts: some HAA500 clips have only 9-17 frames, which taggnn handles).
Exit status 0 when the layout is complete, 1 otherwise.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PATTERN = re.compile(r"^(?P<name>.+)_(?P<number>\d{3})\.mp4$")


def check(root: Path, decode: bool = False, expected_classes: int = 500) -> dict:
    video_root = root / "video"
    if not video_root.is_dir():
        return {"ok": False, "problems": [f"{video_root} is not a directory"]}
    problems, short = [], []
    classes = sorted(p.name for p in video_root.iterdir() if p.is_dir())
    if len(classes) != expected_classes:
        problems.append(f"{len(classes)} class folders, expected {expected_classes}")
    for name in classes:
        numbers = set()
        for file in sorted((video_root / name).iterdir()):
            match = PATTERN.match(file.name)
            if not match or match.group("name") != name:
                problems.append(f"{file}: not named '{name}_<NNN>.mp4'")
                continue
            numbers.add(int(match.group("number")))
            if decode:
                from taggnn.data import VideoError, count_frames

                try:
                    frames = count_frames(file)
                    if frames < 32:
                        short.append((str(file), frames))
                except VideoError as error:
                    problems.append(str(error))
        missing = sorted(set(range(20)) - numbers)
        if missing:
            problems.append(f"{name}: missing clip numbers {missing}")
    return {"ok": not problems, "classes": len(classes), "problems": problems, "short_clips": short}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--decode", action="store_true", help="also open every clip and count its frames")
    parser.add_argument("--classes", type=int, default=500, help="expected number of classes")
    args = parser.parse_args(argv)
    report = check(args.root, args.decode, args.classes)
    print(f"classes: {report.get('classes', 0)}")
    for problem in report["problems"][:50]:
        print(f"problem: {problem}")
    if len(report["problems"]) > 50:
        print(f"... and {len(report['problems']) - 50} more")
    if report.get("short_clips"):
        print(f"{len(report['short_clips'])} clips shorter than 32 frames (frames are repeated when sampling)")
    print("layout OK" if report["ok"] else "layout has problems")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
