"""Calibration files per robot and, in a later issue, the procedures and system identification that produce them."""
