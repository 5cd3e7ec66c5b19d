"""Attention backend, capture reductions and edge masks (filled by the tracing and knockout work)."""
