"""The report formats and their file extensions (free of Jinja and Polars: the CLI's --help uses them)."""

FORMATS = {"html": "html", "md": "md", "txt": "txt"}
