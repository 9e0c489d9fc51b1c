"""The demo's HTTP server (standard library only): the page, and a JSON API over a
`DemoSession`.

  GET  /                      the page
  GET  /api/info              {"model", "builtins"}
  POST /api/image?name=N      body: an encoded image -> its size, embedding time, a PNG of it
  POST /api/builtin?name=N    a built-in image, the same answer
  POST /api/segment           {"points": [[x, y], ...], "labels": [1|0, ...], "box": [x1, y1,
                              x2, y2] | null} -> {"overlay" (a PNG data URL), "iou", "area",
                              "seconds", "points", "labels"}
  POST /api/everything        -> {"overlay", "count", "seconds"}
  GET  /api/mask.png          the last result's mask (255 inside)
  GET  /api/result.json       the last result as COCO JSON (RLE masks)
A user mistake is status 400 with {"error": MESSAGE}; nothing is fetched from elsewhere.
"""
import http.server
import json
import urllib.parse

from efficientsam_jax.demo.page import PAGE
from efficientsam_jax.errors import UserError, one_line

MAX_UPLOAD_BYTES = 64 * 2**20


def make_handler(session):
  """A request handler class bound to one DemoSession."""

  class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "efficientsam_jax-demo"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      del format, args  # the console shows the tool's own lines only

    def _send(self, status: int, body: bytes, content_type: str, filename: str = ""):
      self.send_response(status)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      self.send_header("Cache-Control", "no-store")
      if filename:
        self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
      self.end_headers()
      self.wfile.write(body)

    def _json(self, value, status: int = 200):
      self._send(status, json.dumps(value).encode(), "application/json")

    def _answer(self, work):
      try:
        work()
      except UserError as e:
        self._json({"error": one_line(e)}, 400)
      except Exception as e:  # pylint: disable=broad-except
        # The page shows the message; the server keeps serving.
        self._json({"error": f"{type(e).__name__}: {one_line(e)}"}, 500)

    def _body(self) -> bytes:
      length = int(self.headers.get("Content-Length") or 0)
      if length > MAX_UPLOAD_BYTES:
        raise UserError(f"upload of {length} bytes is over {MAX_UPLOAD_BYTES}")
      return self.rfile.read(length)

    def do_GET(self):  # pylint: disable=invalid-name
      path = urllib.parse.urlparse(self.path).path
      routes = {
          "/": lambda: self._send(200, PAGE.encode(), "text/html; charset=utf-8"),
          "/api/info": lambda: self._json({"model": session.model_name,
                                           "builtins": list(session.builtins)}),
          "/api/mask.png": lambda: self._send(200, session.mask_png(), "image/png", "mask.png"),
          "/api/result.json": lambda: self._send(200, session.coco_json().encode(),
                                                 "application/json", "result.json"),
      }
      if path not in routes:
        return self._json({"error": f"no page {path}"}, 404)
      self._answer(routes[path])

    def do_POST(self):  # pylint: disable=invalid-name
      url = urllib.parse.urlparse(self.path)
      name = urllib.parse.parse_qs(url.query).get("name", [""])[0]

      def parsed():
        try:
          value = json.loads(self._body() or b"{}")
        except ValueError:
          raise UserError("the request is not JSON") from None
        if not isinstance(value, dict):
          raise UserError("the request must be a JSON object")
        return value

      routes = {
          "/api/image": lambda: self._json(session.set_upload(self._body(), name)),
          "/api/builtin": lambda: self._json(session.set_builtin(name)),
          "/api/segment": lambda: self._json(session.segment(**_prompts(parsed()))),
          "/api/everything": lambda: self._json(session.everything()),
      }
      if url.path not in routes:
        return self._json({"error": f"no page {url.path}"}, 404)
      self._answer(routes[url.path])

  return Handler


def _prompts(request: dict) -> dict:
  return {"points": request.get("points"), "labels": request.get("labels"),
          "box": request.get("box")}


def serve(session, host: str, port: int, ready=print):
  """Serves until interrupted; calls ready(url) once listening (port 0: a free port)."""
  server = http.server.ThreadingHTTPServer((host, port), make_handler(session))
  ready(f"http://{host}:{server.server_address[1]}/")
  try:
    server.serve_forever()
  finally:
    server.server_close()
