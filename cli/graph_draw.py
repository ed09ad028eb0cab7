"""Draw a graph config: Mermaid text on stdout (or --out), an image with --png.

    python -m cli.graph_draw configs/local.yaml [--app NAME] [--out graph.mmd] [--png graph.png]

The config is validated first (a bad graph prints its problems, exit 1). The
image is rendered offline by Graphviz's `dot` from the same layout as the
Mermaid text (`.svg` works too).
"""
from __future__ import annotations

import argparse
import sys

from apps.graph import load
from deployments.graph.draw import mermaid, render_png
from deployments.graph.validate import GraphSpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a Serve config with an apps.graph:build application, or its args alone")
    parser.add_argument("--app", help="the application's name, when the config has several graph apps")
    parser.add_argument("--out", help="write the Mermaid text here instead of stdout")
    parser.add_argument("--png", help="also render an image here (Graphviz dot; .png or .svg)")
    options = parser.parse_args(argv)
    try:
        spec = load(options.config, options.app).graph
    except (GraphSpecError, ValueError) as error:
        print(f"{options.config}: invalid\n{error}", file=sys.stderr)
        return 1
    text = mermaid(spec)
    if options.out:
        with open(options.out, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    if options.png:
        render_png(spec, options.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
