"""Tests of the hardware layer."""
