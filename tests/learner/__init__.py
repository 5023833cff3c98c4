"""Tests of the learner layer."""
