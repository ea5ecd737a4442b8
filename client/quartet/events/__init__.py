"""Generated from protos/quartet/events. Do not edit; run scripts/gen_protos.py."""
