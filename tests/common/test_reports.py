"""The typed results: strict, their JSON Schemas published and current, and the learner's rows written through them."""

import json
from pathlib import Path

import pydantic
import pytest

from robot_app.common.reports import LearnerOptions, ProgressRow, schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_the_published_json_schemas_are_current():
    """Regenerate with `python -m robot_app.common.reports docs/schemas` after changing a model."""
    published = {path.stem: json.loads(path.read_text()) for path in SCHEMAS.glob("*.json")}
    assert published == schemas()


def test_results_refuse_unknown_and_mistyped_fields():
    row = {"elapsed_s": 1.0, "transitions": 10, "updates": 0, "updates_per_transition": None,
           "configured_updates_per_transition": 1.0, "owed_updates": 0, "candidates": 0, "episodes": 0,
           "recent_return": None, "robots": {}, "running": {}, "rejected": {}, "quarantined": {}, "gate": None,
           "losses": {}}
    assert ProgressRow.model_validate_json(ProgressRow(**row).model_dump_json()) == ProgressRow(**row)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        ProgressRow(**row, surprise=1)
    with pytest.raises(pydantic.ValidationError, match="transitions"):
        ProgressRow(**row | {"transitions": "many"})
    with pytest.raises(pydantic.ValidationError, match="updates_per_transition"):
        LearnerOptions(updates_per_transition=0)
