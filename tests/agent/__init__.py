"""Tests of the robot side's runtime: the agent loop, the safety supervisor, the robot spec, task and calibration."""
