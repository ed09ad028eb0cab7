"""The platform's command lines, above the builders they check and deploy:

    python -m cli.check configs/*.yaml         # every bad key named, before anything starts
    python -m cli.deploy configs/cluster.yaml  # check, then `serve deploy`
    python -m cli.graph_draw configs/local.yaml --app recommend   # the graph as Mermaid / DOT / PNG
"""
