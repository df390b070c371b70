"""What runs in the builder, next to code from git: the door, the warm worker, the site holder, Nikola's run, the
work tree and the sandbox. The publisher imports only `protocol` of it (tests/test_imports.py)."""
