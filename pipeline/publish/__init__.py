"""What publishes: the watcher and what it drives (git, the build requests, staging, previews, the link report,
notifications). It runs no code from git and serves nothing."""
