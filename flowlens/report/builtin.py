"""Registers the report sections of the built-in analyses (trace, knockout, pathways) in page order."""

from __future__ import annotations

from flowlens.report.knockout import knockout_section, pathways_section
from flowlens.report.sections import register_section
from flowlens.report.trace_sections import edge_flow_section, frame_flow_section, video_section

register_section("frames", frame_flow_section, order=10)
register_section("edges", edge_flow_section, order=20)
register_section("video", video_section, order=30)
register_section("knockout", knockout_section, order=40)
register_section("pathways", pathways_section, order=50)
