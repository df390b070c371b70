"""What serve.py uses to answer readers: its answers, files from a release, the /_site/ endpoints, the deploy page
and the webhook's rules. It reads what the publisher wrote (status, releases, the link report), never imports it."""
