"""Tests of the common layer."""
