"""Command-line tools: the offline preview and the generated config reference."""
