"""Generated from protos/quartet/regions/v1. Do not edit; run scripts/gen_protos.py."""
