"""The operator's dashboard: live fleet telemetry, learning curves, the policy registry, deploys and software stops."""
