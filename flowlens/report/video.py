"""The video itself in the report: frame thumbnails with a query's attention drawn over each frame's pixels.

The attention of `last` (stored per layer and head as `last_to_video`) is averaged over heads and laid onto
each frame group's token grid with `layout.video_cells`; a cell covers the matching block of the thumbnail
(the processor's resize maps the whole frame onto the grid). Families that merge frames (Qwen2-VL's
temporal patches) show every source frame of a group under the group's map.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlens.models.layout import TokenLayout
from flowlens.report.figures import TEMPLATE
from flowlens.report.plain import typed

# transparent where the query puts no attention, opaque yellow-red where it puts the most (of this layer)
OVERLAY_COLORS = [
    [0.0, "rgba(255,0,0,0)"],
    [0.2, "rgba(255,30,0,0.25)"],
    [0.6, "rgba(255,120,0,0.6)"],
    [1.0, "rgba(255,235,0,0.85)"],
]
MAX_GROUPS_SHOWN = 16


@dataclass
class CellMaps:
    """Per frame group: (layers, rows, cols) attention of one query on that group's token cells."""

    maps: list[np.ndarray]
    grids: list[tuple[int, int]]


def cell_maps(layout: TokenLayout, attention: np.ndarray) -> CellMaps:
    """Spread `attention` (layers, video tokens), one value per video feature token, onto each group's grid.

    Separator tokens (row = col = -1) belong to no cell and are left out; a cell holding several tokens
    (none do today) would sum them.
    """
    cells = layout.video_cells
    n_layers = attention.shape[0]
    maps = []
    for group, (rows, cols) in enumerate(layout.frame_grid):
        grid = np.zeros((n_layers, int(rows), int(cols)), dtype=np.float64)
        hit = (cells[:, 0] == group) & (cells[:, 1] >= 0) & (cells[:, 2] >= 0)
        index = np.flatnonzero(hit)
        np.add.at(grid, (slice(None), cells[index, 1], cells[index, 2]), attention[:, index])
        maps.append(grid)
    return CellMaps(maps, [(int(r), int(c)) for r, c in layout.frame_grid])


def png_data_uri(image: np.ndarray) -> str:
    """An (h, w, 3) uint8 image as a `data:image/png;base64,...` URI (no imaging library needed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def video_figure(
    layout: TokenLayout, thumbnails: np.ndarray | None, attention: np.ndarray, query: str = "last"
) -> dict[str, Any]:
    """Thumbnails (one column per frame group, one row per merged source frame) under the query's attention.

    `attention` is (layers, video tokens), already averaged over heads. The slider picks the layer; each
    layer's colours run from its smallest cell (transparent) to its largest (hover shows the attention itself). Returned as a
    plain plotly figure dict (see `flowlens.report.plain`): it is built once per sample page.
    """
    maps = cell_maps(layout, attention)
    n_groups = min(layout.n_frames, MAX_GROUPS_SHOWN)
    sources = layout.frame_sources[:n_groups]
    depth = max((len(s) for s in sources), default=1) if thumbnails is not None else 1
    gap_x, gap_y = 0.008, 0.12 / depth
    width = (1.0 - gap_x * (n_groups - 1)) / n_groups
    height = (1.0 - gap_y * (depth - 1)) / depth
    data: list[dict[str, Any]] = []
    axes: dict[str, Any] = {}
    notes: list[dict[str, Any]] = []
    heat: list[int] = []
    owner: list[int] = []
    for group in range(n_groups):
        rows, cols = maps.grids[group]
        for row in range(depth):
            has_frame = (
                thumbnails is not None and row < len(sources[group]) and sources[group][row] < len(thumbnails)
            )
            if not has_frame and row > 0:
                continue
            n = row * n_groups + group + 1
            x_name, y_name = ("x", "y") if n == 1 else (f"x{n}", f"y{n}")
            h, w = thumbnails.shape[1:3] if has_frame else (rows, cols)
            if has_frame:
                data.append(
                    {
                        "type": "image",
                        "source": png_data_uri(thumbnails[sources[group][row]]),
                        "hoverinfo": "skip",
                        "xaxis": x_name,
                        "yaxis": y_name,
                    }
                )
            dy, dx = h / rows, w / cols
            heat.append(len(data))
            owner.append(group)
            data.append(
                {
                    "type": "heatmap",
                    "z": typed(maps.maps[group][0]),
                    "x0": -0.5 + dx / 2,
                    "dx": dx,
                    "y0": -0.5 + dy / 2,
                    "dy": dy,
                    "coloraxis": "coloraxis",
                    "hovertemplate": f"group {group}, cell row %{{y:.0f}} col %{{x:.0f}} (pixels)<br>"
                    "attention %{z:.4f}<extra></extra>",
                    "xaxis": x_name,
                    "yaxis": y_name,
                }
            )
            left = group * (width + gap_x)
            top = 1.0 - row * (height + gap_y)
            axes[x_name.replace("x", "xaxis", 1)] = {
                "domain": [left, left + width],
                "range": [-0.5, w - 0.5],
                "anchor": y_name,
                **_BARE,
            }
            axes[y_name.replace("y", "yaxis", 1)] = {
                "domain": [top - height, top],
                "range": [h - 0.5, -0.5],
                "anchor": x_name,
                "scaleanchor": x_name,
                **_BARE,
            }
            source = sources[group][row] if row < len(sources[group]) else None
            label = f"frame {source}" if source is not None else f"group {group}"
            if len(sources[group]) > 1:
                label = f"group {group}: {label}"
            notes.append(
                {
                    "text": label,
                    "x": left + width / 2,
                    "y": top,
                    "xref": "paper",
                    "yref": "paper",
                    "xanchor": "center",
                    "yanchor": "bottom",
                    "showarrow": False,
                    "font": {"size": 10},
                }
            )
    n_layers = attention.shape[0]
    lows = [min(float(m[layer].min()) for m in maps.maps) for layer in range(n_layers)]
    peaks = [max(float(m[layer].max()) for m in maps.maps) for layer in range(n_layers)]
    peaks = [peak if peak > low else low + 1e-12 for low, peak in zip(lows, peaks, strict=True)]
    steps = [
        {
            "method": "update",
            "label": str(layer + 1),
            "args": [
                {"z": [typed(maps.maps[group][layer]) for group in owner]},
                {
                    "coloraxis.cmin": lows[layer],
                    "coloraxis.cmax": peaks[layer],
                    "title.text": _title(query, layer),
                },
                heat,
            ],
        }
        for layer in range(n_layers)
    ]
    return {
        "data": data,
        "layout": {
            "template": TEMPLATE,
            "title": {"text": _title(query, 0)},
            "coloraxis": {
                "colorscale": OVERLAY_COLORS,
                "cmin": lows[0],
                "cmax": peaks[0],
                "colorbar": {"title": {"text": "attention"}, "thickness": 12},
            },
            "sliders": [
                {
                    "active": 0,
                    "currentvalue": {"prefix": "layer (1-based) "},
                    "pad": {"t": 30},
                    "steps": steps,
                }
            ],
            "annotations": notes,
            "height": 170 + int(900 / max(n_groups, 1) * depth) + 60,
            "margin": {"l": 20, "r": 20, "t": 70, "b": 20},
            "font": {"size": 10},
            "plot_bgcolor": "#ffffff",
            **axes,
        },
    }


_BARE = {"showticklabels": False, "showgrid": False, "zeroline": False, "ticks": ""}


def _title(query: str, layer: int) -> str:
    return (
        f"`{query}` attention on each frame's cells, layer {layer + 1} (1-based; mean over heads; "
        "colours from this layer's smallest to largest cell)"
    )
