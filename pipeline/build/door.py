"""The builder's first process: it waits lean for the publisher, then becomes the build worker.

    python3 -m pipeline.build.door      (the builder's command: pequod.xml's <builder command="…">)

An idle site keeps its builder waiting, so what waits must cost next to nothing: this module imports only
what listening takes (about 4 MiB of anonymous memory, where the build worker's own imports take 9). It
listens on the unix socket BUILDER_SOCKET names (its directory is the builder's; the socket is open to the
publisher, who runs as another user) and, once the publisher connects, replaces itself (exec, the same
PID 1) with `python3 -m pipeline.build.worker --serve LISTENER CONNECTION`, which serves that one connection
and ends (pipeline.build.worker.serve). The builder's restart policy then starts a fresh door, in a fresh PID
namespace, so nothing of a build outlives it.
"""

import os
import signal
import socket
import sys


def _stop(_signum: int, _frame: object) -> None:
    sys.exit(0)  # PID 1 has no default action for SIGTERM: `docker stop` would wait for its SIGKILL


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    path = os.environ.get("BUILDER_SOCKET", "")
    if not path.startswith("/"):
        print("builder: BUILDER_SOCKET must name the builder's socket (an absolute path)", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):  # the socket of the door before this one
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(1)
    print(f"builder: waiting for the publisher on {path}", file=sys.stderr, flush=True)
    connection, _ = listener.accept()
    listener.set_inheritable(True)
    connection.set_inheritable(True)
    os.execv(sys.executable, [sys.executable, "-m", "pipeline.build.worker", "--serve",
                              str(listener.fileno()), str(connection.fileno())])
    return 1  # not reached: execv returns only by raising


if __name__ == "__main__":
    sys.exit(main())
