"""Class definitions (``classes.json``) and the id scheme with weather modes.

Each base class exists in three weather modes; a class id is the mode's offset
plus the base id, and the model has 80 class slots (original-system.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

NUM_CLASS_SLOTS = 80
WEATHER_MODES: dict[str, int] = {"Norm": 0, "Wint": 20, "Night": 40}
WEATHER_SUFFIX: dict[str, str] = {"Norm": "", "Wint": "(Wint)", "Night": "(Night)"}

BASE_CLASS_NAMES = [
    "ArmorVehicle", "Truck", "Vehicle", "Artillery", "Shadow", "Trenches", "MilitaryMan",
    "TyreTracks", "AdditArmoredTank", "Smoke", "Plane", "Moto", "CamouflageNet",
    "CamouflageBranches", "Roof", "Building", "Caponier",
]  # fmt: skip

_HEX_COLOUR = re.compile(r"#?(?:[0-9a-fA-F]{2})?([0-9a-fA-F]{6})")


class ClassDefinition(BaseModel):
    """One entry of classes.json (PascalCase keys, as the platform writes them)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: int = Field(alias="Id", ge=0, lt=WEATHER_MODES["Wint"])
    name: str = Field(alias="Name", min_length=1)
    short_name: str = Field(default="", alias="ShortName")
    color: str = Field(default="#ff000000", alias="Color")

    @field_validator("color")
    @classmethod
    def _normalise_colour(cls, value: str) -> str:
        """Accept ``#rrggbb``, ``#aarrggbb`` and bare hex; keep ``#rrggbb``.

        The original dropped the first three characters blindly; a colour that
        is not hex at all is rejected with a clear error instead.
        """
        match = _HEX_COLOUR.fullmatch(value.strip())
        if not match:
            raise ValueError(f"not a hex colour: {value!r}")
        return "#" + match.group(1).lower()


class ClassCatalog(BaseModel):
    classes: list[ClassDefinition]

    @classmethod
    def default(cls) -> ClassCatalog:
        return cls(
            classes=[
                ClassDefinition(id=index, name=name, short_name=name[:4]) for index, name in enumerate(BASE_CLASS_NAMES)
            ]
        )

    @classmethod
    def load(cls, path: Path) -> ClassCatalog:
        """Read classes.json; a missing file means the 17 base classes."""
        if not path.exists():
            return cls.default()
        return cls(classes=json.loads(path.read_text(encoding="utf-8")))

    def valid_ids(self) -> frozenset[int]:
        """Every id a label may use: base ids in each weather mode."""
        return frozenset(c.id + offset for c in self.classes for offset in WEATHER_MODES.values())

    def slot_names(self) -> dict[int, str]:
        """Names of all 80 model slots; unused slots are ``Class-N``."""
        names = {slot: f"Class-{slot}" for slot in range(NUM_CLASS_SLOTS)}
        for definition in self.classes:
            for mode, offset in WEATHER_MODES.items():
                names[definition.id + offset] = definition.name + WEATHER_SUFFIX[mode]
        return names
