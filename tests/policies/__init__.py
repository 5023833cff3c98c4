"""Tests of the policies layer."""
