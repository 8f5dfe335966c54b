"""The Jinja2 templates and the CSS/JS of the report, installed as `reportgen.templates`.

`common/` holds what the site and the PDF share, `site/` and `pdf/` their pages,
`assets/` the stylesheets and the site's script (shipped with the report: no CDN).
"""
