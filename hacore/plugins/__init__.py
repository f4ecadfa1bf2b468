"""Plugins: the hook specifications, the backend registry filled through them, the plugin
manager, and the configuration checked against the backends the plugins registered."""
