"""Tests across the layers: the CLI, the demo, pacing, hostile input end to end, and the dependency rules."""
