"""The embedded stack for one machine: demo data, a Feast repo on SQLite, an
MLflow registry on SQLite, a Triton model repository exported from it, and
the local Triton server. Everything lands in one ignored folder (`.local/`)."""
