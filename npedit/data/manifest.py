"""Real data: a JSONL manifest, one edit request per line, validated in full before training.

Each line is a JSON object with "image" (path relative to the manifest's folder, or absolute),
"instruction", "category" (one of CATEGORIES, case-insensitive) and "target_caption"; optional
"object" and "caption" (default ""). Other keys are kept. Blank lines are skipped (line numbers
still count them).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from npedit.data.example import CATEGORIES, EditExample
from npedit.data.images import check_image, load_image

REQUIRED_FIELDS = ("image", "instruction", "category", "target_caption")
OPTIONAL_FIELDS = {"object": "", "caption": ""}
MAX_LISTED = 20


class ManifestError(ValueError):
    """A manifest is unusable. The message names the file and, per problem, "file:LINE: cause"."""


def _check_record(record, folder: Path) -> tuple[dict, list[str]]:
    """(normalised record, causes of its problems) for one parsed JSON line."""
    if not isinstance(record, dict):
        return {}, [f"expected a JSON object, got {type(record).__name__}"]
    out, causes = dict(record), []
    for field in REQUIRED_FIELDS + tuple(OPTIONAL_FIELDS):
        required = field in REQUIRED_FIELDS
        value = record.get(field)
        if field not in record and required:
            causes.append(f"missing required field {field!r}")
            value = ""
        elif value is None and not required:
            value = OPTIONAL_FIELDS[field]
        elif not isinstance(value, str):
            causes.append(f"field {field!r} must be a string, got {type(value).__name__}")
            value = ""
        elif required and not value.strip():
            causes.append(f"field {field!r} is empty")
        out[field] = value
    out["category"] = out["category"].strip().lower()
    if out["category"] and out["category"] not in CATEGORIES:
        causes.append(f"field 'category' has unknown value {record['category']!r}; "
                      f"allowed: {', '.join(CATEGORIES)}")
    if out["image"].strip():
        out["image"] = str((folder / out["image"]).resolve())
    return out, causes


def read_manifest(path: str | os.PathLike, num_threads: int | None = None) -> list[dict]:
    """Validate EVERY line (JSON, fields, category, image readable) and return the records.

    Records get "image" resolved to an absolute path, "category" lower-cased, "object"/"caption"
    defaulted. Raises one ManifestError listing up to 20 problems as "<name>:<line>: <cause>".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from e
    entries: list[tuple[int, dict, list[str]]] = []   # (1-based line, record, causes)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            entries.append((lineno, {}, [f"bad JSON ({e.msg} at column {e.colno})"]))
            continue
        entries.append((lineno, *_check_record(record, path.parent)))

    # Every referenced image must fully decode: each distinct file once, in parallel.
    images = sorted({r["image"] for _, r, _ in entries if r.get("image", "").strip()})
    workers = num_threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = dict(zip(images, pool.map(check_image, images)))
    for _, record, causes in entries:
        reason = reasons.get(record.get("image"))
        if reason is not None:
            causes.append(f"image {record['image']}: {reason}")

    problems = [f"{path.name}:{lineno}: {c}" for lineno, _, causes in entries for c in causes]
    if not entries:
        problems.append(f"{path.name}: the manifest has no records")
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ManifestError(f"invalid manifest {path} ({len(problems)} problem{'s' * (len(problems) > 1)}):"
                            f"\n  {listed}{more}")
    return [record for _, record, _ in entries]


class ManifestDataset:
    """Map-style dataset of EditExample from a manifest; images are RGB, centre-cropped to a square
    and resized (PIL bicubic) to image_size. Validates the whole manifest at construction."""

    def __init__(self, path: str | os.PathLike, image_size: int):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.path = Path(path)
        self.image_size = image_size
        self.records = read_manifest(self.path)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> EditExample:
        r = self.records[index]
        return EditExample(image=load_image(r["image"], self.image_size), caption=r["caption"],
                           instruction=r["instruction"], category=r["category"], object=r["object"],
                           target_caption=r["target_caption"])

    def __repr__(self) -> str:
        return f"ManifestDataset({str(self.path)!r}, image_size={self.image_size}, {len(self)} examples)"
