"""The MuJoCo side: environments over dm_control suite tasks and (later) our own robots, the virtual robot and the gate."""
