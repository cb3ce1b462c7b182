"""Formats: what a request and an answer look like on the wire.

- `schemas`: the pydantic request and response models of /predict and the OpenAPI examples.
- `csvio`: CSV in and out (reading the lab's spreadsheet, writing the scored one).
- `media`: the media types the service reads and writes.
- `jsonresp`: JSON answers, encoded fast.
"""
