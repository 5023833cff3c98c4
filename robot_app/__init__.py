"""robot_app: the application that wires the learner, the simulator and the on-robot agent into processes."""
