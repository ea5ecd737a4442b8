"""Generated from protos/quartet/auth/v1. Do not edit; run scripts/gen_protos.py."""
