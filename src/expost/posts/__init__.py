"""Posts: templates, figures, caveats, code embeds and the HTML preview, rendered from results (never running anything)."""
