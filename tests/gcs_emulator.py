"""A Google Cloud Storage emulator on 127.0.0.1 for the tests: `python -m tests.gcs_emulator PORT
BUCKET` serves an in-memory store holding the bucket until it is stopped.

gcp-storage-emulator lacks two things Cloud Storage does and the project relies on, added here:
generation preconditions on uploads and deletes (`ifGenerationMatch`: 0 creates only where the
object is absent, N acts only on generation N, else 412), which the workdir lock and
TensorStore's writes use, and the object's generation in a download's `x-goog-generation`
header, which TensorStore reads. Clients reach it as Google's reach an emulator, through
STORAGE_EMULATOR_HOST alone.
"""

import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str | None) -> str:
  try:
    return str(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return "0"


def _upload_name(request) -> str | None:
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data if isinstance(request.data, dict) else {}
  return (data.get("meta") or data).get("name") if data else None


def _preconditioned(handler, name_of):
  def checked(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    if wanted and _generation(storage, request.params["bucket_name"],
                              name_of(request)) != wanted[0]:
      response.status = HTTPStatus.PRECONDITION_FAILED
      response.json({"error": {"code": 412, "message": "Precondition Failed"}})
      return None
    return handler(request, response, storage, *args, **kwargs)

  return checked


def _with_generation(download):
  def headed(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except NotFound:
      pass
    return download(request, response, storage, *args, **kwargs)

  return headed


def main(port: int, bucket: str) -> None:
  replaced = {
      objects.insert: _preconditioned(objects.insert, _upload_name),
      objects.delete: _preconditioned(objects.delete,
                                      lambda request: request.params.get("object_id")),
      objects.download: _with_generation(objects.download),
  }
  server.HANDLERS = tuple((regex, {method: replaced.get(handler, handler)
                                   for method, handler in handlers.items()})
                          for regex, handlers in server.HANDLERS)
  for name, original in (("insert", objects.insert), ("delete", objects.delete),
                         ("download", objects.download)):
    setattr(objects, name, replaced[original])  # handlers also call each other by name
  emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  emulator.start()
  print("ready", flush=True)
  threading.Event().wait()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
