"""Rendering: figures, the static site (`render.site.SiteWriter`) and the PDF."""
