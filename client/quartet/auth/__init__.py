"""Generated from protos/quartet/auth. Do not edit; run scripts/gen_protos.py."""
