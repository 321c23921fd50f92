"""Bluesky Jetstream (SPEC section 8): the second source."""
