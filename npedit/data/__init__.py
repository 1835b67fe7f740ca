"""Data layer: unpaired edit examples, the synthetic shapes world, JSONL manifests, step-indexed loading.

Evaluation-only names (the true outcome of an edit) live in `npedit.data.edits` and
`npedit.data.oracle`; training code should need only the dataset classes and `StepLoader`.
"""
from npedit.data.edits import EditRequest, apply_edit, edit_example_with_truth, random_edit
from npedit.data.example import CATEGORIES, EditBatch, EditExample, collate
from npedit.data.loader import StepLoader, batch_indices
from npedit.data.manifest import REQUIRED_FIELDS, ManifestDataset, ManifestError, read_manifest
from npedit.data.oracle import parse_scene, parse_scenes
from npedit.data.shapes import (BACKGROUNDS, COLORS, POSITIONS, SHAPES, SHAPES_CATEGORIES, SIZES, Scene,
                                ShapeObject, ShapesEditDataset, caption, random_scene, render, vocabulary)

__all__ = [
    "BACKGROUNDS", "CATEGORIES", "COLORS", "EditBatch", "EditExample", "EditRequest", "ManifestDataset",
    "ManifestError", "POSITIONS", "REQUIRED_FIELDS", "SHAPES", "SHAPES_CATEGORIES", "SIZES", "Scene",
    "ShapeObject", "ShapesEditDataset", "StepLoader", "apply_edit", "batch_indices", "caption", "collate",
    "edit_example_with_truth", "parse_scene", "parse_scenes", "random_edit", "random_scene", "read_manifest",
    "render", "vocabulary",
]
