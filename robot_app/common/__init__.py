"""Torch-free contracts and utilities that both the robot side and the learner side use: the policy artifact and its
signature, the action scaler, transition chunks, the typed results, whole-file writes and YAML reads, durable SQLite,
the deadline schedule and log throttling."""
