"""What a robot is, independent of how it is reached: its spec, its encoder calibration and its task. numpy only."""
