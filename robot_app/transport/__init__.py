"""ZeroMQ transport between robots and the learner: versioned messages, sockets and CURVE keys. No torch, no pickle."""
