"""The data report's files: `<stem>.report.json` and a Markdown rendering beside each manifest.

What the report says is `manifest.summarize`'s; this module only decides where it goes and how
it reads.
"""

from __future__ import annotations

import json
from pathlib import Path


def paths(manifest_path: str | Path) -> tuple[Path, Path]:
    """Where the report for a manifest lies: `<stem>.report.json` and `<stem>.report.md` beside it."""
    manifest_path = Path(manifest_path)
    return (
        manifest_path.with_name(f"{manifest_path.stem}.report.json"),
        manifest_path.with_name(f"{manifest_path.stem}.report.md"),
    )


def write(report: dict, manifest_path: str | Path) -> None:
    """Write `report` (from `manifest.summarize`) as JSON and as Markdown beside `manifest_path`."""
    json_path, md_path = paths(manifest_path)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report) + "\n")


def render_markdown(report: dict) -> str:
    """The report from `manifest.summarize` as readable Markdown tables."""
    cols = ["non_fractured", "fractured", "total"]
    lines = [
        "# FracAtlas data report",
        "",
        f"root `{report['root']}`, split seed {report['seed']}, val {report['val_fraction']}, "
        f"test {report['test_fraction']}, balanced {report['balanced']}, "
        f"allow_truncated {report['allow_truncated']}",
        "",
        "## Counts",
        "",
    ]
    lines += _table(["", *cols], [[k, *(v[c] for c in cols)] for k, v in report["counts"].items()])
    lines += ["## Usable images by body part", ""]
    lines += _table(["body part", *cols], [[k, *(v[c] for c in cols)] for k, v in report["body_part"].items()])
    lines += ["## Splits", ""]
    lines += _table(
        ["split", *cols, "fractured ratio"],
        [[k, *(v[c] for c in cols), v["fractured_ratio"]] for k, v in report["splits"].items()],
    )
    if report["left_out_by_balancing"]:
        lines += [f"Left out by balancing: {report['left_out_by_balancing']} usable images.", ""]
    lines += [
        f"Modes: {report['modes']}; width, height ranges (px): {report['size_px']}; "
        f"usable images with hardware: {report['hardware']} (a shortcut a model can learn).",
        "",
    ]
    converted = report["converted_modes"]
    if converted:
        lines += ["## Converted modes", ""]
        lines += _table(
            ["mode", "count", "what decoding does"], [[m, v["count"], v["conversion"]] for m, v in converted.items()]
        )
        for mode, info in converted.items():
            lines += [f"**{mode}**: {_ids(info['ids'])}", ""]
    lines += ["## Defects", ""]
    lines += _table(
        ["status", "count", "decision"], [[k, v["count"], v["decision"]] for k, v in report["defects"].items()]
    )
    for status, info in report["defects"].items():
        if info["count"] and status != "duplicate":
            lines += [f"**{status}**: {_ids(info['ids'])}", ""]
    dup = report["defects"]["duplicate"]["groups"]
    if dup:
        lines += ["### Duplicate groups", ""]
        lines += _table(
            ["kept", "copies", "labels agree"], [[k, ", ".join(v["copies"]), v["labels_agree"]] for k, v in dup.items()]
        )
    if report["trailing_bytes"]["ids"]:
        lines += [
            f"**trailing bytes after EOI** ({report['trailing_bytes']['decision']}): "
            f"{_ids(report['trailing_bytes']['ids'])}",
            "",
        ]
    near = report.get("near_duplicates")  # absent from reports written before the perceptual hash
    if near and near["pairs"]:
        lines += [
            "### Near-duplicate pairs",
            "",
            f"Not byte-identical, but within {near['threshold_bits']} of {near['hash_bits']} bits of each other's "
            "perceptual hash (re-saved or re-cropped copies of one film). The study refuses to train when a pair "
            "lies in two splits (see `fracture.data.split_audit`).",
            "",
        ]
        lines += _table(
            ["a", "b", "bits apart", "splits"],
            [[p["a"], p["b"], p["distance"], " / ".join(s or "-" for s in p["splits"])] for p in near["pairs"]],
        )
    items = report["defects"]["label_mismatch"]["items"]
    if items:
        lines += ["### Folder vs CSV label", ""]
        lines += _table(
            ["image_id", "folder", "csv", "status"],
            [[i["image_id"], i["folder_label"], i["csv_label"], i["status"]] for i in items],
        )
    return "\n".join(lines)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        + [""]
    )


def _ids(ids: list[str], limit: int = 20) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")
