"""Tests of the whole house, one folder per layer: common, policies, sim, agent, hardware, transport, learner, e2e."""
