"""Pydantic models of the custom resources: the single source of the API.

The CRD YAML under crds/ is generated from these (``azaion-crdgen``), so every
field's type, default, bounds and description live in exactly one place.
"""
