"""Render the Kubernetes manifests from the two sources of truth:
`kuberay/cluster.yaml` (the typed cluster spec) and the Serve config it names
(`configs/cluster.yaml`, embedded as the RayService's serveConfigV2).

    python -m kuberay.render            # writes kuberay/rendered/*.yaml
    python -m kuberay.render --check    # exit 1 if the committed files are stale

The rendered files are committed so that a review sees exactly what is
applied; a unit test renders in memory and fails when they differ.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from deployments.paths import project_path
from kuberay import consistency, exposure, ingress, mlserver, network_policies, triton, vllm_server
from kuberay.rayservice import rayservice
from kuberay.spec import ClusterSpec, load_spec

HERE = Path(__file__).resolve().parent
SPEC_FILE = HERE / "cluster.yaml"
RENDERED = HERE / "rendered"
HEADER = (
    "# Rendered by `python -m kuberay.render` from kuberay/cluster.yaml and {serve_config}.\n"
    "# Do not edit: change those and render again (a unit test fails when this file is stale).\n"
)


class RenderError(ValueError):
    pass


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so serveConfigV2 reads as the file it is."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(documents: list[dict[str, Any]], header: str) -> str:
    body = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120, explicit_start=True)
    return header + body


def manifests(spec: ClusterSpec, serve_config_text: str) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects in it. Refuses a spec and Serve config that
    disagree (kuberay/consistency.py), and objects that leave the cluster
    open (kuberay/exposure.py)."""
    serve_config = yaml.safe_load(serve_config_text)
    if not isinstance(serve_config, dict):
        raise RenderError(f"{spec.rayservice.serve_config}: not a mapping")
    found = consistency.problems(spec, serve_config)
    if found:
        raise RenderError(f"{spec.rayservice.serve_config} and kuberay/cluster.yaml disagree:\n" + "\n".join(found))
    rendered = {
        "rayservice.yaml": [rayservice(spec, serve_config_text)],
        "triton.yaml": triton.manifests(spec),
        "mlserver.yaml": mlserver.manifests(spec),
        "vllm.yaml": vllm_server.manifests(spec),
        "ingress.yaml": ingress.manifests(spec),
        "network-policies.yaml": network_policies.manifests(spec),
    }
    return refuse_exposed(rendered)


def refuse_exposed(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`rendered`, unless it leaves something open (kuberay/exposure.py)."""
    found = exposure.problems([doc for docs in rendered.values() for doc in docs])
    if found:
        raise RenderError("the manifests would leave the cluster open:\n" + "\n".join(found))
    return rendered


def render(spec_file: Path = SPEC_FILE) -> dict[str, str]:
    """File name -> its text, in memory."""
    spec = load_spec(spec_file)
    serve_config_text = project_path(spec.rayservice.serve_config).read_text()
    header = HEADER.format(serve_config=spec.rayservice.serve_config)
    return {name: dump(docs, header) for name, docs in manifests(spec, serve_config_text).items()}


def stale(rendered: dict[str, str], folder: Path = RENDERED) -> list[str]:
    """Files whose committed text differs from a fresh render (or is missing)."""
    return [name for name, text in rendered.items() if not (folder / name).is_file() or (folder / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberay.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=SPEC_FILE, help="cluster spec (default: kuberay/cluster.yaml)")
    parser.add_argument("--out", type=Path, default=RENDERED, help="output folder (default: kuberay/rendered)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files in --out are stale")
    args = parser.parse_args(argv)
    try:
        rendered = render(args.spec)
    except (RenderError, ValueError) as error:
        print(f"render failed: {error}", file=sys.stderr)
        return 1
    if args.check:
        outdated = stale(rendered, args.out)
        for name in outdated:
            print(f"{args.out / name}: stale, run `python -m kuberay.render`", file=sys.stderr)
        return 1 if outdated else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
