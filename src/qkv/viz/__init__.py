"""Views of explain reports: terminal tables, matplotlib figures, a self-contained HTML page."""
