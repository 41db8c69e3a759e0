"""The HTML report: rows as a frame (data), what is computed from them (analysis), the plotly figures
(figures), the page (page), and the `report` command (command)."""
from .page import render_html, write_report

__all__ = ["render_html", "write_report"]
