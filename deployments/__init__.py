"""The runtime under the Serve builders: the graph runtime (graph/), the node
kinds (nodes/), the HTTP layer (http/) and the libraries they share.

Not a public API: users build on `apps.graph` (`build`, `in_process`,
`load`, `GraphArgs`), `apps.chat:build`, the config schema and the command
lines in `cli/` (docs/development.md, Layout). Names here may change between
versions; the node kinds' configs change only with the schema.
"""
