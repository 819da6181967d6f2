"""Materialization metadata people want to look at: counts, schemas, previews, figures."""


import base64
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import pyarrow.parquet as pq

from kuai_assets.features.catalog import CatalogError
from kuai_assets.formats.released import DataFormatError
from kuai_assets.ml.tracking import TrackingError
from kuai_assets.storage import MissingUpstreamError, disk_full, disk_full_message
from kuai_assets.visual.settings import VisualSettingsError


def table_metadata(path: Path, preview_rows: int = 5) -> dict:
    """Row count, column schema and a preview of a Parquet table."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    rows = parquet.metadata.num_rows
    preview = parquet.read_row_group(0).slice(0, preview_rows).to_pylist() if parquet.num_row_groups else []
    return {
        "dagster/row_count": dg.MetadataValue.int(rows),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in schema]
        ),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
        "size_mb": dg.MetadataValue.float(round(path.stat().st_size / 1e6, 2)),
        "path": dg.MetadataValue.path(str(path)),
    }


def markdown_table(rows: list[dict], max_columns: int = 14) -> str:
    if not rows:
        return "_(no rows)_"
    columns = list(rows[0])[:max_columns]
    more = len(rows[0]) - len(columns)
    lines = ["| " + " | ".join(columns) + (f" | +{more} more |" if more else " |")]
    lines.append("|" + " --- |" * (len(columns) + (1 if more else 0)))
    for row in rows:
        cells = [_cell(row[c]) for c in columns] + (["…"] if more else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return str(value[:6])[:-1] + (", …]" if len(value) > 6 else "]")
    return str(value)


def image(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG inlined as markdown, which the Dagster UI renders."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


@contextmanager
def clear_failures(step: str, work_dir: Path | str) -> Iterator[None]:
    """Turn the platform's own errors, and a disk that filled up while the step wrote under
    `work_dir` (whichever library noticed), into a Dagster Failure with one line a person can act on."""
    try:
        yield
    except (DataFormatError, MissingUpstreamError, CatalogError, TrackingError, VisualSettingsError) as exc:
        raise dg.Failure(description=f"{step}: {exc}", allow_retries=False) from None
    except Exception as exc:
        if not disk_full(exc):
            raise
        raise dg.Failure(description=f"{step}: {disk_full_message(work_dir)}", allow_retries=False) from None
