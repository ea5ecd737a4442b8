"""Generated from protos/quartet/events/v1. Do not edit; run scripts/gen_protos.py."""
