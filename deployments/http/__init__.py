"""HTTP concerns shared by every app of the platform (the graph ingress, the
chat app): error responses, readiness, the route-prefix fix (app.py), and
API keys, body limits, request ids and load shedding (security/). Below both
`apps/` and the graph runtime, above nothing but deployments/errors.py."""
