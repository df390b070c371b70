"""The publishing pipeline: watch a git remote, build with Nikola, publish atomically."""
