"""The batch's results: a table of every job (its row's settings, image, FaceSim, server, tries) as CSV and JSON,
and a contact sheet per identity, a grid of its images with the seed and FaceSim printed under each."""
import csv
import io
import json
from pathlib import Path

from batch_journal import write_atomic

COLUMNS = ["identity", "row", "prompt", "seed", "base_model", "checkpoint", "weight", "merge_step", "steps", "cfg",
           "width", "height", "negative", "workflow", "status", "image", "facesim", "face", "server", "attempts",
           "seconds", "message", "job"]
THUMB, CAPTION, COLUMNS_PER_SHEET = 256, 34, 6


def _row(record: dict) -> dict:
    return {**{key: record.get(key) for key in COLUMNS}, **record.get("settings", {}),
            "workflow": Path(record["workflow"]).name}


def write_table(out: Path, records: list[dict]) -> list[dict]:
    rows = [_row(record) for record in sorted(records, key=lambda r: (r["identity"], r["row"], r["prompt"],
                                                                       r["seed"]))]
    write_atomic(out / "results.json", (json.dumps(rows, indent=2) + "\n").encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "results.csv", text.getvalue().encode())
    return rows


def caption(row: dict) -> str:
    score = "no face" if row["facesim"] is None and row["face"] is False else (
        "no score" if row["facesim"] is None else f"FaceSim {row['facesim']:.4f}")
    return f"seed {row['seed']}  {score}"


def write_contact_sheets(out: Path, rows: list[dict]) -> list[Path]:
    """``contact_<identity>.png`` per identity with finished images, in the table's order."""
    from PIL import Image, ImageDraw  # only the sheets need Pillow

    sheets = []
    for identity in dict.fromkeys(row["identity"] for row in rows):
        done = [row for row in rows if row["identity"] == identity and row["status"] == "done"]
        if not done:
            continue
        columns = min(COLUMNS_PER_SHEET, len(done))
        lines = -(-len(done) // columns)
        sheet = Image.new("RGB", (columns * THUMB, lines * (THUMB + CAPTION)), "white")
        draw = ImageDraw.Draw(sheet)
        for i, row in enumerate(done):
            x, y = (i % columns) * THUMB, (i // columns) * (THUMB + CAPTION)
            with Image.open(out / row["image"]) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMB, THUMB))
                sheet.paste(image, (x + (THUMB - image.width) // 2, y + (THUMB - image.height) // 2))
            draw.text((x + 4, y + THUMB + 2), caption(row), fill="black")
            draw.text((x + 4, y + THUMB + 17), row["prompt"][:40], fill="gray")
        data = io.BytesIO()
        sheet.save(data, "PNG")
        path = out / f"contact_{identity}.png"
        write_atomic(path, data.getvalue())
        sheets.append(path)
    return sheets
