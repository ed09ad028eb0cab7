"""Declarative inference graphs: a typed spec (`spec`), its validation with the
path of the offending key (`validate`), and an in-process async executor
(`executor`) whose nodes are the kinds of deployments/nodes/, so a graph runs
in a notebook without Ray. Serve placement plugs in at `executor.NodeFactory`."""
