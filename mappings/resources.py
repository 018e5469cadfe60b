"""Scheduling resources as data: the rooms and modalities of the department, in YAML files an analyst owns
(``<mappings>/resources/*.yaml``, or RIS_RESOURCES_DIR), loaded at start by the composition root and saved through
:func:`app.services.scheduling.save_resource` (which validates every value). The JSON API
(``PUT /api/resources/<name>``) changes the same rows.

One file holds a list under ``resources``::

    resources:
      - name: CT1                      # unique; letters, digits, '.', '_' and '-'
        ae_title: CT_ROOM1             # Scheduled Station AE Title (0040,0001) of its steps
        station_name: CT1              # Scheduled Station Name (0040,0010)
        modalities: [CT]               # DICOM modality defined terms (PS3.3 C.7.3.1.1.1)
        opening_hours:                 # site-local; a weekday without intervals is closed
          mon: [["08:00", "12:00"], ["13:00", "17:00"]]
          tue: [["08:00", "17:00"]]
        default_minutes: 15            # slot length of any procedure code not below
        slot_minutes: {CTH: 20, CTCH: 30}
        active: true

A file that cannot be read, or a key that is not one of these, is refused with the file, its line and the key.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from app.services.scheduling import ResourceData

KEYS = ("name", "ae_title", "station_name", "modalities", "opening_hours", "default_minutes", "slot_minutes", "active")


class ResourceFileError(ValueError):
    """A resources file that cannot be used; the message names the file, the line and what is wrong."""


def resource_data(item, where: str) -> ResourceData:
    """One resource from its mapping (a YAML item or a JSON object); ResourceFileError names ``where`` and the key."""
    if not isinstance(item, dict):
        raise ResourceFileError(f"{where}: a resource must be a mapping of {', '.join(KEYS)}")
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        raise ResourceFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    if not isinstance(item.get("name"), str) or not item["name"].strip():
        raise ResourceFileError(f"{where}: name missing")
    modalities = item.get("modalities", [])
    if isinstance(modalities, str):
        modalities = [modalities]
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise ResourceFileError(f"{where}: modalities must be a list of DICOM modalities")
    for key, kind in (("opening_hours", dict), ("slot_minutes", dict)):
        if not isinstance(item.get(key, {}), kind):
            raise ResourceFileError(f"{where}: {key} must be a mapping")
    for key in ("ae_title", "station_name"):
        if not isinstance(item.get(key, ""), str):
            raise ResourceFileError(f"{where}: {key} must be text")
    if not isinstance(item.get("active", True), bool):
        raise ResourceFileError(f"{where}: active must be true or false")
    return ResourceData(name=item["name"].strip(), ae_title=item.get("ae_title", "").strip(),
                        station_name=item.get("station_name", "").strip(),
                        modalities=tuple(m.strip() for m in modalities), opening_hours=item.get("opening_hours", {}),
                        default_minutes=item.get("default_minutes", 15), slot_minutes=item.get("slot_minutes", {}),
                        active=item.get("active", True))


def read_file(path: Path) -> list[ResourceData]:
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ResourceFileError(f"{path}: cannot be read: {exc}") from None
    if node is None:
        return []
    if not isinstance(node, yaml.MappingNode):
        raise ResourceFileError(f"{path}:{node.start_mark.line + 1}: the file must be a mapping with 'resources'")
    found = []
    for key, value in node.value:
        if key.value != "resources":
            raise ResourceFileError(f"{path}:{key.start_mark.line + 1}: unknown key {key.value!r} (known: resources)")
        if not isinstance(value, yaml.SequenceNode):
            raise ResourceFileError(f"{path}:{value.start_mark.line + 1}: resources must be a list")
        for item in value.value:
            data = yaml.safe_load(yaml.serialize(item))
            found.append(resource_data(data, f"{path}:{item.start_mark.line + 1}"))
    return found


def read_folder(folder: Path) -> list[ResourceData]:
    """Every resource of every ``*.yaml`` in ``folder`` (none when it does not exist), in file order."""
    if not folder.is_dir():
        return []
    found: list[ResourceData] = []
    for path in sorted(folder.glob("*.yaml")):
        found.extend(read_file(path))
    names = [r.name for r in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ResourceFileError(f"{folder}: resource named more than once: {', '.join(twice)}")
    return found
