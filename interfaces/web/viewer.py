"""The image viewer: a stored study's series list, one image (and frame) at a time rendered by the
server as PNG, window/level presets, and keyboard navigation (viewer.js; links work without it)."""

from __future__ import annotations

from pathlib import Path

from flask import Response, abort, render_template, request, url_for

from app.queries import images as image_views
from interfaces import inputs
from interfaces.web import web
from interfaces.web.rendering import PRESETS, frame_count, render_png
from interfaces.web.security import reader, record, requires, settings


def _index(name: str, size: int) -> int:
    """A 1-based position from the query string as a 0-based index; bad values answer 400, not 500."""
    raw = request.args.get(name, "1").strip() or "1"
    try:
        return inputs.whole_number(raw, name, low=1, high=max(size, 1)) - 1
    except inputs.BadValue as exc:
        abort(400, f"{exc.message}.")


def _preset() -> str:
    preset = request.args.get("preset", "auto")
    if preset not in PRESETS:
        abort(400, f"preset={preset!r} is not one of {', '.join(PRESETS)}.")
    return preset


def _archive_file(relative: str) -> Path:
    root = settings().archive_path.resolve()
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file():
        abort(404, "The image file is not in the archive.")
    return path


@web.get("/studies/<study_uid>/viewer")
@requires("images")
def viewer(study_uid: str):
    with reader() as db:
        study = image_views.study_images(db, study_uid)
        if study is None:
            abort(404, f"There is no study {study_uid} in the archive.")
        series_list = [s for s in study["series"] if s["instances"]]
        if not series_list:
            abort(404, "This study has no images yet.")
        s_index = _index("series", len(series_list))
        series = series_list[s_index]
        i_index = _index("image", len(series["instances"]))
        instance = series["instances"][i_index]
        location = image_views.instance_file(db, instance["sop_instance_uid"])
    frames = frame_count(_archive_file(location["path"]))
    f_index = _index("frame", frames)
    preset = _preset()
    record("view", entity="study", entity_id=study_uid, patient_key=study["patient_id"],
           detail=f"viewer: series {s_index + 1} image {i_index + 1} frame {f_index + 1}")

    def link(series_at=s_index, image_at=i_index, frame_at=f_index, preset_name=preset):
        return url_for("web.viewer", study_uid=study_uid, series=series_at + 1, image=image_at + 1,
                       frame=frame_at + 1, preset=preset_name)

    count = len(series["instances"])
    nav = {
        "prev_image": link(image_at=i_index - 1, frame_at=0) if i_index > 0 else None,
        "next_image": link(image_at=i_index + 1, frame_at=0) if i_index + 1 < count else None,
        "prev_frame": link(frame_at=f_index - 1) if f_index > 0 else None,
        "next_frame": link(frame_at=f_index + 1) if f_index + 1 < frames else None,
        "first": link(image_at=0, frame_at=0), "last": link(image_at=count - 1, frame_at=0),
    }
    return render_template("viewer.html", study=study, series_list=series_list, s_index=s_index, series=series,
                           i_index=i_index, instance=instance, frames=frames, f_index=f_index, preset=preset,
                           presets=PRESETS, nav=nav, link=link,
                           frame_url=url_for("web.frame", sop_uid=instance["sop_instance_uid"], number=f_index + 1,
                                             preset=preset))


@web.get("/instances/<sop_uid>/frames/<int:number>.png")
@requires("images")
def frame(sop_uid: str, number: int):
    preset = _preset()
    with reader() as db:
        location = image_views.instance_file(db, sop_uid)
    if location is None:
        abort(404, f"There is no instance {sop_uid}.")
    png = render_png(_archive_file(location["path"]), number - 1, preset)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "private, max-age=300"})
