"""The reference backends of hacore, each a plugin registered through the "hacore" group."""
