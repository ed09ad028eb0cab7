"""The Serve builders a config's `import_path` names, and nothing else:
`apps.graph:build` (declarative graphs) and `apps.chat:build` (the
OpenAI-compatible chat app). Their modules' `__all__` is the public API."""
