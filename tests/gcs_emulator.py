"""A Google Cloud Storage emulator on 127.0.0.1 for the tests: `python -m tests.gcs_emulator PORT
BUCKET` serves an in-memory store holding the bucket until it is stopped.

gcp-storage-emulator ignores the generation preconditions (`ifGenerationMatch`) that the
workdir lock relies on, as Cloud Storage honours them; uploads here honour them too: 0 creates
only where the object is absent, N replaces only generation N, else 412. Reached as Google's
clients reach an emulator, through STORAGE_EMULATOR_HOST alone.
"""

import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _with_preconditions(upload):
  def checked(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    name = request.query.get("name", [None])[0]
    if wanted and name:
      try:
        current = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
      except NotFound:
        current = "0"
      if str(current) != wanted[0]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed"}})
        return None
    return upload(request, response, storage, *args, **kwargs)

  return checked


def _with_delete_preconditions(delete):
  def checked(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    if wanted:
      try:
        current = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])["generation"]
      except NotFound:
        current = "0"
      if str(current) != wanted[0]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    return delete(request, response, storage, *args, **kwargs)

  return checked


def main(port: int, bucket: str) -> None:
  insert, delete = _with_preconditions(objects.insert), _with_delete_preconditions(objects.delete)
  server.HANDLERS = tuple(
      (regex, {method: insert if handler is objects.insert else
               delete if handler is objects.delete else handler
               for method, handler in handlers.items()})
      for regex, handlers in server.HANDLERS)
  objects.insert = insert  # the router also calls it by name for uploads without a body
  emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  emulator.start()
  print("ready", flush=True)
  threading.Event().wait()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
