"""pequod-agent: runs applications from their manifest in isolated, IPv6-only containers."""
