"""The headless on-robot runtime. Slim by rule: it never imports torch, mujoco or dm_control."""
