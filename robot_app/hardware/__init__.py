"""The robot interface on the host: the serial frame codec and the pyserial backend. Slim: no torch, no mujoco."""
