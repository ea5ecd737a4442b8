"""Generated from protos/quartet/errors/v1. Do not edit; run scripts/gen_protos.py."""
