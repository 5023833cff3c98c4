"""Tests of the sim layer."""
