# Sphinx configuration of the reference site (make docs, scripts/docs.sh; docs/site/README.md).
# The site is built offline: no intersphinx, so every reference must resolve inside it, and
# scripts/docs.sh runs sphinx-build with warnings as errors.

project = "mv6.transition"
copyright = "mv6.transition developers"  # noqa: A001 (Sphinx's name)
html_title = "mv6.transition"
html_short_title = "mv6.transition"
extensions = ["sphinx_antsibull_ext", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
html_copy_source = False
html_use_index = False
pygments_style = "ansible"
highlight_language = "YAML+Jinja"
default_role = "any"
nitpicky = True
# The Markdown pages (MyST): headings become anchors, so that [x](page.md#a-heading) resolves.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
templates_path = ["_templates"]
# "--limit" and "--check" must stay two hyphens, not become a dash.
smartquotes = False
