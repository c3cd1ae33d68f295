"""A local datastore that never loses a saved label: atomic writes, earlier versions kept, tags checked.

MONAI Label 0.8.5's LocalDatastore copies a label straight onto its final name (a server killed mid-copy leaves
a torn file), overwrites the previous label without a trace, rewrites datastore_v2.json in place, and joins the
label tag into a path unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException, MONAILabelError, MONAILabelException

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HISTORY = ".history"


def atomic_copy(src: str, dest: str) -> None:
    """Copy to a temporary file beside `dest`, flush it to disk, then rename over `dest` in one step."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".saving-", suffix=os.path.basename(dest))
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class SafeLocalDatastore(LocalDatastore):
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """LocalDatastore.save_label, with the tag checked, the replaced label kept and the copy atomic."""
        if not isinstance(label_tag, str) or not TAG.fullmatch(label_tag):
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      "label tag must be letters, digits, '_', '.' or '-' (at most 64)")
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        _, label_ext = self._to_id(os.path.basename(label_filename))
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        dest = os.path.join(label_path, name)
        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            if os.path.exists(dest):  # keep the version this save replaces
                keep = os.path.join(label_path, HISTORY)
                os.makedirs(keep, exist_ok=True)
                shutil.copy2(dest, os.path.join(keep, f"{int(time.time() * 1000)}-{name}"))
            atomic_copy(label_filename, dest)
            info = dict(label_info or {})
            info.update({"ts": int(time.time()), "name": name})
            obj.labels[label_tag] = DataModel(info=info, ext=label_ext)
            self._update_datastore_file(lock=False)
        return image_id

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self._datastore_config_path), prefix=".datastore-")
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._datastore_config_path)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()
