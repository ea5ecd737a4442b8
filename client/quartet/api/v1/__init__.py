"""Generated from protos/quartet/api/v1. Do not edit; run scripts/gen_protos.py."""
