"""Reusable node kinds of inference graphs.

Each node kind is a plain async class: it runs inline in the replica that
calls it, as its own Serve deployment, or in a notebook with no Ray at all.
"""
