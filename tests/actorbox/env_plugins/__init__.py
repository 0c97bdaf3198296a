"""Actor classes with their own dependencies, kept apart from the test modules: an
actor imports its class's module inside its own environment, which has no pytest."""
