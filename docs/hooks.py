"""mkdocs hook: serve the KaTeX that the package ships (src/gradest/static/katex) as the site's katex/."""

from pathlib import Path

from mkdocs.structure.files import File

STATIC = Path(__file__).resolve().parents[1] / "src" / "gradest" / "static"


def on_files(files, config):
    for path in sorted((STATIC / "katex").rglob("*")):
        if path.is_file():
            files.append(File(path.relative_to(STATIC).as_posix(), str(STATIC), config["site_dir"],
                              config["use_directory_urls"]))
    return files
