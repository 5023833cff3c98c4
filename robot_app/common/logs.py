"""Logging helpers shared by the robot and the learner side."""


def first_and_doubling(count: int) -> bool:
    """True on the 1st, 2nd, 4th, 8th ... occurrence: how a repeating event is logged without flooding the log."""
    return count > 0 and count & (count - 1) == 0
