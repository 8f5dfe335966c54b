"""`reportgen serve`: a built site on the loopback address, and nothing but the site.

A report may hold patient images, so the server listens on 127.0.0.1 only and hands
out only regular files that are inside the site folder once every link is resolved:
a link leading out of the site (`rootlink -> /`), a path climbing out of it (`..`,
encoded or not) or a device or named pipe is answered 404, and a folder without its
index.html is not listed. A request must name the server itself in its Host header
(`127.0.0.1:PORT` or `localhost:PORT`): a page of another site that a DNS rebinding
points at 127.0.0.1 sends its own name, and is refused.

    server = open_server(Path("site"), port=0)   # 0: a free port
    server.serve_forever()
"""

from __future__ import annotations

import errno
import functools
import http.server
import logging
import os
import stat
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

from reportgen.errors import UserError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
HOST_NAMES = (LOOPBACK, "localhost")
HTTP_DEFAULT_PORT = 80


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the regular files of one folder (`directory`, resolved) and nothing else."""

    def log_message(self, message_format: str, *args: object) -> None:
        # through logging, so that --quiet hides the request lines
        log.info("%s %s", self.address_string(), message_format % args)

    def send_head(self) -> BinaryIO | None:
        refusal = self._host_refusal()
        if refusal:
            self.send_error(*refusal)
            return None
        if self._served_file() is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        return super().send_head()

    def translate_path(self, path: str) -> str:
        # the standard library drops `..` from the URL; the links it leaves are resolved
        # here, so that what is opened is the file that was checked
        try:
            return os.path.realpath(super().translate_path(path))
        except ValueError:  # a NUL byte in the path
            return os.path.join(self.directory, "\0")

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(HTTPStatus.NOT_FOUND)

    def _host_refusal(self) -> tuple[HTTPStatus, str] | None:
        """Why the Host header does not name this server, or None when it does."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            return HTTPStatus.BAD_REQUEST, "exactly one Host header is needed"
        port = self.server.server_address[1]
        allowed = {f"{name}:{port}" for name in HOST_NAMES}
        if port == HTTP_DEFAULT_PORT:
            allowed.update(HOST_NAMES)
        if hosts[0].strip().lower() not in allowed:
            return HTTPStatus.FORBIDDEN, f"this server answers to {LOOPBACK}:{port} only"
        return None

    def _served_file(self) -> str | None:
        """The regular file of the site this request names (a folder's index.html), or None
        when there is none inside the site."""
        root = os.path.realpath(self.directory)
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            path = os.path.realpath(os.path.join(path, "index.html"))
        if os.path.commonpath([root, path]) != root:
            return None
        try:
            return path if stat.S_ISREG(os.stat(path).st_mode) else None
        except (OSError, ValueError):
            return None


def site_folder(folder: Path) -> Path:
    """`folder`, resolved, when it holds a built site; UserError saying what is wrong."""
    root = folder.resolve()
    if not root.exists():
        raise UserError(f"{root}: no such folder; give the site folder that `reportgen build` "
                        "wrote (output.site in the spec)")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; give the site folder that holds index.html")
    if not (root / "index.html").is_file():
        raise UserError(f"{root}: no index.html here (build a report first)")
    return root


def open_server(folder: Path, port: int) -> http.server.ThreadingHTTPServer:
    """A server of the site in `folder` bound to 127.0.0.1:`port` (0: a free port), not
    yet serving; UserError when the folder is no site or the port cannot be had."""
    root = site_folder(folder)
    handler = functools.partial(SiteHandler, directory=str(root))
    try:
        return http.server.ThreadingHTTPServer((LOOPBACK, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is already in use on {LOOPBACK}: stop the other "
                            "server or pick another port with --port") from exc
        raise UserError(f"cannot serve on {LOOPBACK}:{port} ({exc.strerror or exc}): "
                        "pick another port with --port") from exc
